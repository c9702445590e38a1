"""Decoded datasets on disk: ``images.npy`` (N, C, H, W) uint8, memory-mapped when read; ``labels.npy``
(int64, -1 unlabelled; absent when nothing is labelled); ``meta.json`` (file names, class names)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass
class ImageArray:
    """A decoded dataset. ``images`` is (N, C, H, W) uint8 with C in {1, 3}."""

    images: np.ndarray
    labels: np.ndarray | None
    filenames: list[str]
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8 or self.images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be (N, C, H, W) uint8 with C in (1, 3), got {self.images.shape} {self.images.dtype}"
            )
        n = self.images.shape[0]
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {self.labels.shape}")
        if len(self.filenames) != n:
            raise ValueError(f"expected {n} file names, got {len(self.filenames)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labelled(self) -> np.ndarray:
        """Indices of labelled items."""
        if self.labels is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.labels >= 0)

    def save(self, directory: Path) -> None:
        """Write atomically: into a sibling temporary directory, then rename."""
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover from an interrupted save
        tmp.mkdir(parents=True)
        np.save(tmp / "images.npy", np.ascontiguousarray(self.images))
        if self.labels is not None:
            np.save(tmp / "labels.npy", self.labels.astype(np.int64))
        (tmp / "meta.json").write_text(json.dumps({"filenames": self.filenames, "classes": self.classes}))
        if directory.exists():  # a re-run replaces the previous result
            old = directory.with_name(directory.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> ImageArray:
        directory = Path(directory)
        images = np.load(directory / "images.npy", mmap_mode="r" if mmap else None)
        labels_path = directory / "labels.npy"
        labels = np.load(labels_path) if labels_path.exists() else None
        meta = json.loads((directory / "meta.json").read_text())
        return cls(images, labels, meta["filenames"], meta["classes"])


def resize_array(images: np.ndarray, size: tuple[int, int], chunk: int = 1024) -> np.ndarray:
    """Resize (N, C, H, W) uint8 to (N, C, *size) uint8 with antialiased bilinear filtering, in chunks."""
    if images.shape[-2:] == tuple(size):
        return images
    out = np.empty((images.shape[0], images.shape[1], *size), dtype=np.uint8)
    for start in range(0, images.shape[0], chunk):
        x = torch.from_numpy(np.array(images[start : start + chunk])).float()
        y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def fit_for_training(images: np.ndarray, image_size: int) -> np.ndarray:
    """Shrink stored images whose long side exceeds twice the training size: random resized crops read at most
    ~2× the output resolution, so larger images only cost memory bandwidth."""
    h, w = images.shape[-2:]
    limit = 2 * image_size
    if max(h, w) <= limit:
        return images
    scale = limit / max(h, w)
    return resize_array(images, (max(1, round(h * scale)), max(1, round(w * scale))))


def to_float(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, C, H, W) uint8 → float in [0, 1] on ``device``, without a copy (the loop's batch is one already)."""
    return torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True).float().div_(255)


def match_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(N, C, H, W) uint8 with C in {1, 3} → C = ``channels``: grey replicated, or RGB to luma (ITU-R 601-2, as
    PIL's ``convert("L")``)."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=1)
    weights = np.array([299, 587, 114], dtype=np.uint32).reshape(1, 3, 1, 1)
    return ((images.astype(np.uint32) * weights).sum(axis=1, keepdims=True) // 1000).astype(np.uint8)


def fit_image(im: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Convert a PIL image to (channels, *size) uint8: scale to cover ``size`` keeping its aspect ratio,
    then centre-crop. Used for stored datasets and for images sent to the embedding endpoint alike."""
    im = im.convert("L" if channels == 1 else "RGB")
    h, w = size
    if im.size != (w, h):
        scale = max(h / im.height, w / im.width)
        new = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
        im = im.resize(new, Image.Resampling.BILINEAR, reducing_gap=3.0)
        left, top = (new[0] - w) // 2, (new[1] - h) // 2
        im = im.crop((left, top, left + w, top + h))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)
