"""Seconds per phase of a training step, measured without making the host wait for the device."""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

Mark = float | torch.cuda.Event


class PhaseClock:
    """Adds the time between two marks to a phase. On a CPU a mark is the wall clock (its ops are synchronous);
    on CUDA it is an event in the stream, so a phase is the device's time between marks, including time it
    waited for the host, and is read once the device has passed both events (``lap`` checks without waiting,
    ``flush`` waits)."""

    def __init__(self, device: torch.device, phases: Iterable[str]) -> None:
        self.seconds = dict.fromkeys(phases, 0.0)
        self.on_cuda = device.type == "cuda"
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def mark(self) -> Mark:
        if not self.on_cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def lap(self, phase: str, since: Mark) -> Mark:
        """Adds the time from ``since`` to now to ``phase``; returns now's mark."""
        now = self.mark()
        if isinstance(since, float) and isinstance(now, float):
            self.seconds[phase] += now - since
            return now
        assert isinstance(since, torch.cuda.Event)
        assert isinstance(now, torch.cuda.Event)
        self._pending.append((phase, since, now))
        while self._pending and self._pending[0][2].query():
            self._read(*self._pending.pop(0))
        return now

    def flush(self) -> dict[str, float]:
        """Waits for the device to pass every pending mark; returns the seconds per phase."""
        for pending in self._pending:
            pending[2].synchronize()
            self._read(*pending)
        self._pending.clear()
        return self.seconds

    def reset(self) -> None:
        self.flush()
        self.seconds = dict.fromkeys(self.seconds, 0.0)

    def _read(self, phase: str, start: torch.cuda.Event, end: torch.cuda.Event) -> None:
        self.seconds[phase] += start.elapsed_time(end) / 1000
