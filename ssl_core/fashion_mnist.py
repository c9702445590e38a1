"""Reader for Fashion-MNIST IDX files as installed by Debian's ``dataset-fashion-mnist`` (nothing is
downloaded), for tests, benchmarks and the README (``api.core.example_data`` zips it for the walk-through)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path(os.environ.get("JAGA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a NumPy array of its stored dtype (uint8 here)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(
    split: str = "train", limit: int | None = None, root: Path = DEFAULT_ROOT
) -> tuple[np.ndarray, np.ndarray]:
    """First ``limit`` images of a split as ((N, 28, 28) uint8, (N,) int64 labels)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return images[:limit].copy(), labels[:limit].copy()


def class_tinted(gray: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 1, H, W) grayscale → (N, 3, H, W), each class multiplied by its own colour (RGB in [0.3, 1], one
    palette per ``seed``), so colour is predictable from the gray image only by recognising the class."""
    palette = np.random.default_rng(seed).uniform(0.3, 1.0, (int(labels.max()) + 1, 3))
    return (gray.astype(np.float32) * palette[labels][:, :, None, None]).round().astype(np.uint8)
