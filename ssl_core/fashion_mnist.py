"""Reader for Fashion-MNIST IDX files as installed by Debian's ``dataset-fashion-mnist`` (nothing is
downloaded), for tests, benchmarks and the README."""

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


def write_archive(path: Path, split: str = "train", limit: int = 2000, offset: int = 0) -> int:
    """Write images ``offset .. offset+limit`` of a split as PNGs in class folders (``coat/00012.png``) into a
    zip archive, the layout ``POST /v1/datasets`` accepts. Returns the number of images written."""
    import io
    import zipfile

    from PIL import Image

    images, labels = load_fashion_mnist(split, offset + limit)
    images, labels = images[offset:], labels[offset:]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            zf.writestr(f"{CLASSES[label]}/{offset + i:05d}.png", buf.getvalue())
    return len(images)


def class_tinted(gray: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 1, H, W) grayscale → (N, 3, H, W), each class multiplied by its own colour (RGB in [0.3, 1], one
    palette per ``seed``), so colour is predictable from the gray image only by recognising the class."""
    palette = np.random.default_rng(seed).uniform(0.3, 1.0, (int(labels.max()) + 1, 3))
    return (gray.astype(np.float32) * palette[labels][:, :, None, None]).round().astype(np.uint8)
