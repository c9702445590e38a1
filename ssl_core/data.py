"""Decoded datasets on disk: ``images.npy`` (N, C, H, W) uint8, memory-mapped when read; ``labels.npy``
(int64, -1 unlabelled; absent when nothing is labelled); ``meta.json`` (file names, class names).

Images stream: ``NpyWriter`` writes an array row chunk by row chunk through file writes, ``read_rows`` reads a
range of a mapped array back through file reads, so ingest, saving and scans over a dataset hold one chunk of
pixels, whatever the dataset's size (pixels pass through the page cache, not the process's memory)."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
import torch.nn.functional as F

#: Rows are copied (saved, resized, scanned) in chunks of about this many bytes.
CHUNK_BYTES = 16 << 20
#: Header room for a row count of this many digits, so the header is rewritten in place with the final count.
ROW_COUNT_DIGITS = 20


def staging_dir(directory: Path, tag: str = "") -> Path:
    """A sibling a dataset directory is written into before its atomic rename, ``<name>.tmp`` or, for a writer
    that must not share it, ``<name>.tmp-<tag>`` (``ArtifactStore`` removes them all with the dataset)."""
    directory = Path(directory)
    return directory.with_name(directory.name + ".tmp" + (f"-{tag}" if tag else ""))


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """A format 1.0 ``.npy`` header whose length does not depend on ``shape[0]`` (up to ``ROW_COUNT_DIGITS``
    digits), padded so the data starts 64-byte aligned."""
    text = f"{{'descr': {np.lib.format.dtype_to_descr(dtype)!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * (ROW_COUNT_DIGITS - len(str(shape[0])))
    prefix = len(np.lib.format.magic(1, 0)) + 2
    length = -(-(prefix + len(text) + 1) // 64) * 64 - prefix
    return np.lib.format.magic(1, 0) + struct.pack("<H", length) + text.ljust(length - 1).encode("latin1") + b"\n"


class NpyWriter:
    """Writes an ``.npy`` array of up to ``capacity`` rows of ``row_shape`` by appending rows with ``write``;
    ``finish`` sets the header to the rows written, truncates and returns the file memory-mapped. Used as a
    context manager, an exception removes the half-written file."""

    def __init__(self, path: Path, capacity: int, row_shape: tuple[int, ...], dtype: np.dtype | type = np.uint8):
        self.path = Path(path)
        self.capacity = capacity
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by finish or abort
        self._file.write(_npy_header((capacity, *self.row_shape), self.dtype))
        self.offset = self._file.tell()

    def write(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.row_shape or rows.dtype != self.dtype:
            raise ValueError(f"rows must be (n, {self.row_shape}) {self.dtype}, got {rows.shape} {rows.dtype}")
        if self.count + len(rows) > self.capacity:
            raise ValueError(f"{self.count + len(rows)} rows written to an array of {self.capacity}")
        self._file.write(np.ascontiguousarray(rows).data)
        self.count += len(rows)

    def finish(self) -> np.ndarray:
        """The array of the rows written, memory-mapped (an empty one in memory: nothing can map zero bytes)."""
        self._file.seek(0)
        self._file.write(_npy_header((self.count, *self.row_shape), self.dtype))
        assert self._file.tell() == self.offset  # the header's length does not depend on the row count
        self._file.truncate(self.offset + self.count * self.dtype.itemsize * int(np.prod(self.row_shape)))
        self._file.close()
        if self.count == 0:
            return np.zeros((0, *self.row_shape), self.dtype)
        return np.load(self.path, mmap_mode="r")

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None and not self._file.closed:
            self.abort()


def maps_file(array: np.ndarray, path: Path) -> bool:
    """Whether ``array`` is the whole of the ``.npy`` file at ``path``, memory-mapped (not a slice of it)."""
    return (
        isinstance(array, np.memmap)
        and isinstance(array.base, mmap.mmap)
        and array.filename is not None
        and Path(array.filename) == Path(path).resolve()
    )


def _reads_from_file(array: np.ndarray) -> bool:
    """Whether ``read_rows`` reads ``array`` with file reads: a contiguous memory map of a whole file."""
    return isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.flags.c_contiguous


def read_rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``array`` as an array in memory. A whole memory-mapped file is read with file
    reads, so a scan over it leaves no mapped pages behind in this process (its resident memory stays at one
    chunk, not the file's size)."""
    stop = min(stop, len(array))
    if not _reads_from_file(array):
        return np.array(array[start:stop])
    assert isinstance(array, np.memmap)  # what _reads_from_file checked, for the type checker
    assert array.filename is not None
    row_bytes = array.dtype.itemsize * int(np.prod(array.shape[1:]))
    return np.fromfile(
        array.filename,
        array.dtype,
        count=max(0, stop - start) * row_bytes // array.dtype.itemsize,
        offset=array.offset + start * row_bytes,
    ).reshape(-1, *array.shape[1:])


def rows_per_chunk(array: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> int:
    return max(1, chunk_bytes // max(1, array.dtype.itemsize * int(np.prod(array.shape[1:]))))


def write_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` a chunk at a time (``array`` may be a memory map larger than memory)."""
    step = rows_per_chunk(array)
    with NpyWriter(path, len(array), array.shape[1:], array.dtype) as writer:
        for start in range(0, len(array), step):
            writer.write(read_rows(array, start, start + step))
        writer.finish()


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

    def save(self, directory: Path, staging: Path | None = None) -> None:
        """Write atomically: into ``staging`` (default ``staging_dir(directory)``), then rename. Images already
        written there (by an ingest decoding into ``staging / "images.npy"``) stay where they are."""
        directory = Path(directory)
        tmp = staging or staging_dir(directory)
        if not maps_file(self.images, tmp / "images.npy"):
            shutil.rmtree(tmp, ignore_errors=True)  # a leftover from an interrupted save
            tmp.mkdir(parents=True)
            write_npy(tmp / "images.npy", self.images)
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


def _resize_chunk(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(images).float()
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).numpy()


def resize_array(images: np.ndarray, size: tuple[int, int], chunk: int = 1024) -> np.ndarray:
    """Resize (N, C, H, W) uint8 to (N, C, *size) uint8 with antialiased bilinear filtering, in chunks."""
    if images.shape[-2:] == tuple(size):
        return images
    out = np.empty((images.shape[0], images.shape[1], *size), dtype=np.uint8)
    for start in range(0, images.shape[0], chunk):
        out[start : start + chunk] = _resize_chunk(read_rows(images, start, start + chunk), size)
    return out


@contextlib.contextmanager
def npy_target(path: Path | None) -> Iterator[Path]:
    """``path``, or (None) an anonymous temporary ``.npy`` file, removed on exit: a memory map of it keeps its
    data until the array is freed."""
    if path is not None:
        yield path
        return
    fd, name = tempfile.mkstemp(suffix=".npy")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def resize_to_file(
    images: np.ndarray, size: tuple[int, int], path: Path | None = None, chunk_bytes: int = CHUNK_BYTES
) -> np.ndarray:
    """``resize_array`` into an ``.npy`` file at ``path`` (None: an anonymous temporary file, gone when the
    array is), returned memory-mapped: a chunk of the input and of the output in memory at a time."""
    if images.shape[-2:] == tuple(size):
        return images
    row_shape = (images.shape[1], *size)
    step = min(rows_per_chunk(images, chunk_bytes), rows_per_chunk(np.empty((1, *row_shape), np.uint8), chunk_bytes))
    with npy_target(path) as target, NpyWriter(target, len(images), row_shape) as writer:
        for start in range(0, len(images), step):
            writer.write(_resize_chunk(read_rows(images, start, start + step), size))
        return writer.finish()


def take_rows(
    images: np.ndarray,
    idx: np.ndarray,
    channels: int | None = None,
    path: Path | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> np.ndarray:
    """Rows ``idx`` (ascending, no repeats) of ``images``, converted to ``channels`` (``match_channels``), in an
    ``.npy`` file at ``path`` (None: an anonymous temporary file, gone when the array is), returned
    memory-mapped: a split of a dataset costs disk, not memory, and the source is read a chunk at a time."""
    channels = channels or images.shape[1]
    with npy_target(path) as target, NpyWriter(target, len(idx), (channels, *images.shape[2:])) as writer:
        for rows in rows_at(images, idx, chunk_bytes):
            writer.write(match_channels(rows, channels))
        return writer.finish()


def rows_at(array: np.ndarray, idx: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """Rows ``idx`` (ascending, no repeats) of ``array``, in order, a chunk's worth at a time. A memory-mapped file
    is read a chunk at a time with file reads: indexing it at scattered rows would map far more than the rows
    (the kernel reads ahead around each)."""
    idx = np.asarray(idx, dtype=np.int64)
    if np.any(np.diff(idx) <= 0):
        raise ValueError("rows must be ascending row numbers without repeats")
    step = rows_per_chunk(array, chunk_bytes)
    for start in np.unique(idx // step) * step:  # only the chunks that hold a wanted row
        wanted = idx[(idx >= start) & (idx < start + step)]
        if _reads_from_file(array):  # a chunk read and the rest dropped leaves no mapped pages behind
            yield read_rows(array, int(start), int(start) + step)[wanted - start]
        else:
            yield np.asarray(array[wanted])  # in memory: only the wanted rows are touched


def fit_for_training(images: np.ndarray, image_size: int, scratch: Path | None = None) -> np.ndarray:
    """Shrink stored images whose long side exceeds twice the training size: random resized crops read at most
    ~2× the output resolution, so larger images only cost memory bandwidth. The shrunk copy is a memory-mapped
    file (at ``scratch``, else an anonymous temporary one), so it costs disk, not memory."""
    h, w = images.shape[-2:]
    limit = 2 * image_size
    if max(h, w) <= limit:
        return images
    scale = limit / max(h, w)
    return resize_to_file(images, (max(1, round(h * scale)), max(1, round(w * scale))), scratch)


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
