"""The IDX reader on hand-built files, and the installed Fashion-MNIST when it is there."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from ssl_core.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist, read_idx


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08, zero: int = 0) -> bytes:
    """IDX: two zero bytes, a dtype byte, the number of dimensions, big-endian uint32 sizes, then the data."""
    header = struct.pack(">HBB", zero, dtype_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 1, 28, 28)])
@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_parses_hand_built_files(shape: tuple[int, ...], gzipped: bool, tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / ("data.idx.gz" if gzipped else "data.idx")
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gzipped else data)
    got = read_idx(path)
    assert got.dtype == np.uint8
    assert got.shape == shape
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize(("dtype_code", "zero"), [(0x0D, 0), (0x08, 1)])  # float32 data; a bad magic number
def test_read_idx_refuses_other_files(dtype_code: int, zero: int, tmp_path: Path) -> None:
    path = tmp_path / "data.idx"
    path.write_bytes(idx_bytes(np.zeros((2, 2), dtype=np.uint8), dtype_code, zero))
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        read_idx(path)


def test_load_fashion_mnist_from_a_hand_built_root(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    got_images, got_labels = load_fashion_mnist("test", limit=4, root=tmp_path)
    np.testing.assert_array_equal(got_images, images[:4])
    assert got_labels.dtype == np.int64
    assert got_labels.tolist() == [3, 1, 4, 1]
    assert got_images.flags.writeable  # a copy, not a view of the read-only file buffer
    assert load_fashion_mnist("test", root=tmp_path)[0].shape == (6, 28, 28)


def test_load_fashion_mnist_refuses_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        load_fashion_mnist("validation", root=tmp_path)


installed = pytest.mark.skipif(
    not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").exists(), reason=f"Fashion-MNIST not installed in {DEFAULT_ROOT}"
)


@installed
def test_installed_dataset_shapes() -> None:
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28)
    assert images.dtype == np.uint8
    assert labels.shape == (10_000,)
    assert labels.dtype == np.int64
    assert sorted(np.unique(labels).tolist()) == list(range(10))
    train_images, train_labels = load_fashion_mnist("train", limit=32)
    assert train_images.shape == (32, 28, 28)
    assert train_labels.shape == (32,)
