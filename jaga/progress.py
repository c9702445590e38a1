"""A one-line live progress bar for a job: step, loss, ETA and the latest epoch's online kNN."""

from __future__ import annotations

import shutil
from typing import Any, TextIO

from api.schemas import JobOut

#: The latest metrics shown beside the bar, with their labels.
SHOWN = (("online_knn_accuracy", "kNN"), ("embedding_std", "std"), ("images_per_second", "img/s"))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def describe(job: JobOut, metrics: dict[str, Any] | None = None, width: int = 24) -> str:
    """One line: ``job_… pretrain running [#####.....] 50% step 10/20 loss 3.1 ETA 1m05s kNN 0.71``."""
    filled = round(max(0.0, min(1.0, job.progress)) * width)
    parts = [job.id, job.kind, job.status, f"[{'#' * filled}{'.' * (width - filled)}]", f"{job.progress:4.0%}"]
    if job.total_steps:
        parts.append(f"step {job.step}/{job.total_steps}")
    if job.loss is not None:
        parts.append(f"loss {job.loss:.4g}")
    if job.eta_seconds is not None and job.status == "running":
        parts.append(f"ETA {_duration(job.eta_seconds)}")
    for key, label in SHOWN:
        value = (metrics or {}).get(key)
        if isinstance(value, int | float):
            parts.append(f"{label} {value:.4g}")
    return " ".join(parts)


class ProgressBar:
    """Redraws one line on a terminal; elsewhere (a log, CI) prints a line only when the status or epoch changes."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self.tty = file.isatty()
        self._last: tuple[str, int] | None = None

    def update(self, job: JobOut, metrics: dict[str, Any] | None) -> None:
        line = describe(job, metrics)
        if self.tty:
            columns = shutil.get_terminal_size().columns
            self.file.write("\r" + line[: columns - 1].ljust(columns - 1))
        elif self._last != (job.status, job.epoch):
            self.file.write(line + "\n")
        self._last = (job.status, job.epoch)
        self.file.flush()

    def close(self, job: JobOut, metrics: dict[str, Any] | None) -> None:
        self._last = None
        self.update(job, metrics)
        if self.tty:
            self.file.write("\n")
            self.file.flush()
