"""The walk-through's sample archive, from the installed Fashion-MNIST."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api.core.example_data import write_archive
from ssl_core.fashion_mnist import CLASSES, DEFAULT_ROOT, load_fashion_mnist


@pytest.mark.skipif(
    not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").exists(), reason=f"Fashion-MNIST not installed in {DEFAULT_ROOT}"
)
def test_write_archive_puts_images_in_class_folders(tmp_path: Path) -> None:
    path = tmp_path / "fmnist.zip"
    assert write_archive(path, "test", limit=5, offset=10) == 5
    images, labels = load_fashion_mnist("test", limit=15)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        first = np.asarray(Image.open(io.BytesIO(zf.read(names[0]))))
    assert names == [f"{CLASSES[labels[i]]}/{i:05d}.png" for i in range(10, 15)]
    np.testing.assert_array_equal(first, images[10])
