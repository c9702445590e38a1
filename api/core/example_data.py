"""The walk-through's sample data: Fashion-MNIST images (Debian's ``dataset-fashion-mnist``) as a zip of PNGs in
class folders, the layout ``POST /v1/datasets`` accepts (``jaga example-data``)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from PIL import Image

from ssl_core.fashion_mnist import CLASSES, load_fashion_mnist


def write_archive(path: Path, split: str = "train", limit: int = 2000, offset: int = 0) -> int:
    """Write images ``offset .. offset+limit`` of a split as PNGs in class folders (``coat/00012.png``) into a
    zip archive. Returns the number of images written."""
    images, labels = load_fashion_mnist(split, offset + limit)
    images, labels = images[offset:], labels[offset:]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            zf.writestr(f"{CLASSES[label]}/{offset + i:05d}.png", buf.getvalue())
    return len(images)
