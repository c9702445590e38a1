"""What the benchmark scripts share: peak-memory readings, the machine's description, lightly's grayscale
dataset and the sections of ``docs/BENCHMARKS.md``. The scripts run as files (``python bench/x.py``), so
this module is imported as ``common``."""

from __future__ import annotations

import fcntl
import itertools
import os
import platform
import re
import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image

from ssl_core.data import to_float
from ssl_core.device import resolve_device, supports_bf16
from ssl_core.evaluate import PatchGrid
from ssl_core.fashion_mnist import load_fashion_mnist
from ssl_core.learning_check import encoder_knn
from ssl_core.methods.base import SSLMethod
from ssl_core.precision import cpu_flags, native_bf16_units

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "BENCHMARKS.md"


@dataclass
class Data:
    """The protocol's images: bank = first N train images (also the pretraining set), queries = first M test."""

    train: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray
    test: np.ndarray  # (M, 28, 28) uint8
    test_labels: np.ndarray

    @classmethod
    def load(cls, train_images: int, test_images: int) -> Data:
        train, train_labels = load_fashion_mnist("train", train_images)
        test, test_labels = load_fashion_mnist("test", test_images)
        return cls(train, train_labels, test, test_labels)


def knn_of_encoder(
    encoder: torch.nn.Module, data: Data, image_size: int, device: torch.device, patches: PatchGrid | None = None
) -> float:
    """Weighted kNN accuracy of ``encoder.features`` under the project's evaluation transform (fp32), with the
    kNN settings of ``ssl_core.learning_check.encoder_knn`` (k = 20, T = 0.1); images embedded whole or, with
    ``patches`` (a method's ``patch_grid``), as the mean of their tiles' features."""
    bank, queries = data.train[:, None], data.test[:, None]
    return encoder_knn(
        encoder,
        bank,
        data.train_labels,
        queries,
        data.test_labels,
        device,  # type: ignore[arg-type]
        image_size,
        patches,
    )


def median_images_per_second(
    batches_of_a_round: Callable[[], Iterator[Any]], batches: int, batch_size: int, rounds: int
) -> float:
    """Median over ``rounds`` of images/s over ``batches`` batches, each round a fresh iterator whose first
    batch is an untimed warm-up (it pays for starting DataLoader workers, say); the iterator is dropped after
    its round, which shuts such workers down."""
    rates = []
    for _ in range(rounds):
        it = batches_of_a_round()
        next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        rates.append(batches * batch_size / (time.perf_counter() - start))
        del it
    return float(np.median(rates))


def views_images_per_second(
    method: SSLMethod, images: np.ndarray, batch_size: int, batches: int, rounds: int, seed: int, device: torch.device
) -> float:
    """Source images/s through ``method.views``: batches of ``images`` ((N, C, H, W) uint8, cycled) go
    uint8 → float on the device, then every view is made on the whole batch (``median_images_per_second``)."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def views() -> Iterator[None]:
        for i in itertools.count():
            idx = np.arange(i * batch_size, (i + 1) * batch_size) % len(images)
            method.views(to_float(images[idx], device), generator)
            yield

    return median_images_per_second(views, batches, batch_size, rounds)


def peak_rss_mib() -> float:
    """Peak RSS of this process since it was exec'd.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the parent's peak across (v)fork + exec into it,
    so a child started by a benchmark would report at least the parent's peak. ``VmHWM`` is the high-water
    mark of the process's own address space.
    """
    status = Path("/proc/self/status")
    found = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.MULTILINE) if status.exists() else None
    return int(found.group(1)) / 1024 if found else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def workers_peak_rss_mib() -> float:
    """The largest peak RSS among this process's finished children (forked, not exec'd, so their own)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB


def machine() -> dict[str, Any]:
    """CPU, cores, library versions and bf16 support: the header of every benchmark section."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    try:  # only the scripts that compare with lightly need it installed
        import lightly

        lightly_version: str | None = lightly.__version__  # type: ignore[attr-defined]
    except ImportError:
        lightly_version = None
    return {
        "cpu": found.group(1).strip() if found else platform.processor(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightly": lightly_version,
        "python": platform.python_version(),
        "bf16_supported": supports_bf16(resolve_device("auto")),
        "bf16_units": native_bf16_units(resolve_device("auto")),
        "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx512f", "avx512_bf16", "amx", "avx2"))),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(m: dict[str, Any]) -> str:
    threads = f"{m['torch_threads']} torch thread" + ("s" if m["torch_threads"] != 1 else "")
    return (
        f"**Machine.** {m['cpu']}, {m['cores']} cores ({threads}), torch {m['torch']}, "
        f"torchvision {m['torchvision']}, "
        + (f"lightly {m['lightly']}, " if m["lightly"] else "")
        + f"Python {m['python']}, "
        + _bf16_words(m)
        + (f", load average {m['load_average'][0]:.2f} at the start" if m.get("load_average") else "")
        + "."
    )


def machine_line_now() -> str:
    """This machine's line without the load average: for results recorded before they carried the machine they
    ran on, reported later (the load while writing a report says nothing about the runs)."""
    m = machine()
    m.pop("load_average", None)
    return machine_line(m)


def _bf16_words(m: dict[str, Any]) -> str:
    if m.get("bf16_units"):
        return f"native bf16 ({m['bf16_units']}; flags {' '.join(m.get('cpu_flags', []))})"
    if "bf16_units" in m:  # measured by a version that tells native from emulated
        flags = " ".join(m.get("cpu_flags", []))
        return f"no bf16 units (flags {flags}; oneDNN {'emulates' if m['bf16_supported'] else 'lacks'} bf16)"
    return f"bf16 {'supported' if m['bf16_supported'] else 'not supported'} by the CPU"


#: The directories whose code a benchmark measures.
CODE_DIRS = ("ssl_core", "bench", "api", "worker")


def uncommitted_code() -> list[str] | None:
    """Files under ``CODE_DIRS`` that differ from the git checkout's HEAD (modified, added or untracked), so
    that a script can refuse to record in docs/BENCHMARKS.md what patched code measured; None when this is
    not a git checkout (or git is missing) and nobody can tell."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--", *CODE_DIRS],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    # A rename reads "R  old -> new": the new path is the file that differs.
    return [line[3:].split(" -> ")[-1] for line in out.splitlines() if line.strip()]


class GrayscaleViews(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """(N, H, W) uint8 arrays served as mode-L PIL images through a lightly multi-view transform."""

    def __init__(self, images: np.ndarray, transform: Any) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        return self.transform(Image.fromarray(self.images[i]))


def _section_pattern(key: str) -> str:
    return rf"<!-- {key}:begin -->\n(.*?)<!-- {key}:end -->\n?"


def read_section(key: str) -> str | None:
    """The text of the ``key`` section of docs/BENCHMARKS.md, without its markers (None when absent)."""
    found = re.search(_section_pattern(key), DOC.read_text(), flags=re.DOTALL) if DOC.exists() else None
    return found.group(1) if found else None


def write_section(key: str, section: str | Callable[[str | None], str], drop: tuple[str, ...] = ()) -> str:
    """Replace the ``key`` section of docs/BENCHMARKS.md (append it when new) and remove the ``drop`` ones
    (a full run drops its smoke-run section); returns the section written. ``section`` may be a function of
    the current section (None when absent), called while the doc is locked: scripts running side by side
    then each add their part instead of the last one putting back what the doc held when it started."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / "BENCHMARKS.md.lock", "w") as lock:  # git-ignored, like the results
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nWritten by the scripts in `bench/`.\n"
        found = re.search(_section_pattern(key), text, flags=re.DOTALL)
        new = section(found.group(1) if found else None) if callable(section) else section
        block = f"<!-- {key}:begin -->\n{new}<!-- {key}:end -->\n"
        text, replaced = re.subn(_section_pattern(key), lambda _: block, text, flags=re.DOTALL)
        if not replaced:
            text = text.rstrip("\n") + "\n\n" + block
        for other in drop:
            text = re.sub(_section_pattern(other), "", text, flags=re.DOTALL)
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
    return new
