"""Training batches from a uint8 image array: on a GPU the array moves to device memory once when it fits,
else batches travel through pinned host buffers; on a CPU they are read straight from the array."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ssl_core.data import to_float

Placement = Literal["host", "device", "pinned"]

#: The share of the GPU's free memory the resident dataset may take; training needs the rest.
RESIDENT_SHARE = 0.25
#: Rows moved to the GPU per copy while the dataset is loaded (bounds the host memory a memmap costs).
LOAD_CHUNK_BYTES = 256 * 2**20


def choose_placement(nbytes: int, device: torch.device, max_resident_bytes: int | None = None) -> Placement:
    """``device`` when a CUDA device has room for ``nbytes`` (at most ``max_resident_bytes``, default a quarter
    of its free memory), ``pinned`` on a CUDA device without room, ``host`` elsewhere."""
    if device.type != "cuda":
        return "host"
    if max_resident_bytes is None:
        free, _total = torch.cuda.mem_get_info(device)
        max_resident_bytes = int(free * RESIDENT_SHARE)
    return "device" if nbytes <= max_resident_bytes else "pinned"


class BatchSource:
    """``take(idx)`` gives images ``idx`` of ``images`` ((N, C, H, W) uint8, possibly a memmap) as float in
    [0, 1] on ``device``, with the indices as an int64 tensor there. ``placement`` says how: ``host`` (read and
    copied per batch), ``device`` (the whole array in device memory, gathered there) or ``pinned`` (read into
    one of two page-locked buffers, copied without blocking while the other batch computes)."""

    def __init__(
        self,
        images: np.ndarray,
        device: torch.device,
        batch_size: int,
        placement: Placement | None = None,
    ) -> None:
        self.images = images
        self.device = device
        self.placement: Placement = placement or choose_placement(images.nbytes, device)
        self.resident: torch.Tensor | None = None
        self._buffers: list[torch.Tensor] = []
        self._copied: list[torch.cuda.Event | None] = []
        self._turn = 0
        if self.placement == "device":
            self.resident = self._load(images)
        elif self.placement == "pinned":
            for _ in range(2):
                self._buffers.append(torch.empty((batch_size, *images.shape[1:]), dtype=torch.uint8).pin_memory())
                self._copied.append(None)

    def _load(self, images: np.ndarray) -> torch.Tensor:
        resident = torch.empty(images.shape, dtype=torch.uint8, device=self.device)
        per_row = max(1, int(np.prod(images.shape[1:])))
        rows = max(1, LOAD_CHUNK_BYTES // per_row)
        for start in range(0, len(images), rows):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + rows]))
            resident[start : start + len(chunk)].copy_(chunk)
        return resident

    def take(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """idx: (B,) sorted dataset positions → ((B, C, H, W) float in [0, 1], (B,) int64), both on the device."""
        indices = torch.from_numpy(idx).to(self.device, non_blocking=True)
        if self.resident is not None:
            return self.resident[indices].float().div_(255), indices
        if self.placement == "pinned":
            return self._through_pinned(idx), indices
        return to_float(self.images[idx], self.device), indices

    def _through_pinned(self, idx: np.ndarray) -> torch.Tensor:
        turn, self._turn = self._turn, 1 - self._turn
        buffer, copied = self._buffers[turn][: len(idx)], self._copied[turn]
        if copied is not None:
            copied.synchronize()  # the copy from this buffer two batches ago has finished
        np.take(self.images, idx, axis=0, out=buffer.numpy(), mode="clip")  # "raise" would buffer once more
        on_device = buffer.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._copied[turn] = event
        return on_device.float().div_(255)
