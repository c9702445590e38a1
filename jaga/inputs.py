"""Request bodies built from local things: images as bytes from paths, PIL images or arrays, and a folder
zipped while it uploads."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: An image the SDK can send: a file path, encoded bytes, a PIL image, or an (H, W) / (H, W, C) array
#: (uint8, or floats in [0, 1]).
ImageLike = str | os.PathLike[str] | bytes | np.ndarray | Any
#: Files that a folder upload sends as they are (archives are uploaded, not zipped again).
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".npz")


def image_bytes(image: ImageLike) -> tuple[str, bytes]:
    """(file name, encoded bytes) of one image; arrays and PIL images are encoded as PNG (lossless)."""
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return path.name, path.read_bytes()
    if isinstance(image, bytes):
        return "image", image
    if isinstance(image, np.ndarray):
        from PIL import Image

        array = image
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.floating):
                raise TypeError(f"an image array must be uint8 or float in [0, 1], not {array.dtype}")
            array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise TypeError(f"an image array must be (H, W) or (H, W, 1|3|4), not {array.shape}")
        image = Image.fromarray(array)
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "image.png", buffer.getvalue()
    raise TypeError(f"cannot send {type(image).__name__} as an image: give a path, bytes, a PIL image or an array")


def as_list(images: ImageLike | Iterable[ImageLike]) -> list[ImageLike]:
    """One image or many, as a list (a string, bytes or an array is one image)."""
    if isinstance(images, str | bytes | os.PathLike | np.ndarray) or hasattr(images, "mode"):
        return [images]
    return list(images)


class _Sink:
    """A write-only, unseekable stream: ``zipfile`` then writes data descriptors instead of seeking back."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def folder_files(root: Path) -> list[Path]:
    """The files a folder upload sends, sorted: hidden files and folders are left out."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return found


def zip_chunks(root: Path, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """A zip of ``root``'s files (paths relative to it: class folders stay class folders), produced while it is
    read: memory holds about one chunk, never the archive. Images are stored, not compressed again."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:  # type: ignore[call-overload]
        for path in folder_files(root):
            with path.open("rb") as src, archive.open(path.relative_to(root).as_posix(), "w", force_zip64=True) as dst:
                while chunk := src.read(chunk_size):
                    dst.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


class IterReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (length unknown: httpx sends it chunked)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        while size is None or size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        n = len(self._buffer) if size is None or size < 0 else size
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data
