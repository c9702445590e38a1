"""Uploads: ``inspect_upload`` checks an archive in the request from headers and entry lists only (4xx before
anything is stored); ``decode_upload`` decodes every image once in the ingest job into (N, C, H, W) uint8,
rejecting non-images, corrupt files and oversized ones with a reason.

Archives are bounded twice: at upload by what their headers declare (entry sizes, compression ratios, an npz
array's shape against its size), and at ingest by the bytes actually inflated, counted as entries are read in
chunks, so a header that lies cannot make the worker read more than the limits. Ingest memory is one archive
entry at a time (at most twice ``max_entry_bytes`` while it is read, plus its decoded pixels, at most
``max_image_pixels`` × 4 bytes, and their fitted copy): the stored array is written to disk image by image
(``NpyWriter``), never held whole, so memory does not grow with the number of images."""

from __future__ import annotations

import csv
import io
import lzma
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from math import prod
from pathlib import Path
from typing import IO, Literal

import numpy as np

from api.core.images import GRAY_MODES, ImageRefused, decode_fitted, open_image
from api.core.problems import Problem, field_error
from api.core.settings import Settings
from ssl_core.data import ImageArray, NpyWriter, npy_target, resize_array

Format = Literal["zip", "tar", "npz"]
IGNORED_PREFIXES = ("__MACOSX/",)
MAX_REJECTED_LISTED = 1000
#: Entries are read in chunks of this size, so no more than one chunk past a limit is ever inflated.
READ_CHUNK = 1 << 20
#: Entries and archives inflating to no more than this are not held to the compression ratio: small files of
#: flat colour compress far beyond any sensible ratio.
RATIO_GRACE_BYTES = 1 << 20
#: An npz's images are copied into the stored array in batches of about this many bytes.
NPZ_BATCH_BYTES = 16 << 20
#: Told the fraction of images decoded as decoding goes (``decode_upload``).
Progress = Callable[[float], None]


def _ignore(_: float) -> None:
    pass


#: What reading a zip entry can raise on hostile data: bad CRC or structure, corrupt deflate, bzip2 or lzma
#: streams, encrypted entries (RuntimeError), unsupported compression (NotImplementedError).
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    ValueError,
)
TAR_ERRORS = (tarfile.TarError, zlib.error, lzma.LZMAError, OSError, EOFError, ValueError)
#: Tar member names that are not UTF-8 get U+FFFD for their bad bytes: tarfile's default keeps them as lone
#: surrogates, which a dataset's JSON (its rejected files, its file names) cannot carry.
TAR_NAME_ERRORS = "replace"


@dataclass(frozen=True)
class Limits:
    """What an upload may hold (see the settings of the same names)."""

    max_image_pixels: int
    max_archive_entries: int
    max_entry_bytes: int
    max_inflated_bytes: int
    max_compression_ratio: float
    max_dataset_bytes: int
    stored_max_side: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_image_pixels=settings.max_image_pixels,
            max_archive_entries=settings.max_archive_entries,
            max_entry_bytes=settings.max_entry_bytes,
            max_inflated_bytes=settings.max_inflated_bytes,
            max_compression_ratio=settings.max_compression_ratio,
            max_dataset_bytes=settings.max_dataset_bytes,
            stored_max_side=settings.stored_max_side,
        )

    def ratio_budget(self, compressed: int) -> float:
        """The most bytes ``compressed`` bytes may inflate to."""
        return max(RATIO_GRACE_BYTES, self.max_compression_ratio * compressed)


@dataclass
class UploadInfo:
    format: Format
    num_entries: int


@dataclass
class DecodeResult:
    data: ImageArray
    rejected: list[dict[str, str]] = field(default_factory=list)
    num_rejected: int = 0


def _bad_file(reason: str, code: str = "invalid_file") -> Problem:
    return field_error("file", reason, code=code)


def _parts(name: str) -> tuple[str, ...]:
    """``PurePosixPath(name).parts`` of a relative member name, without ``pathlib`` interning every part: the
    interpreter's table of interned strings then grows with the archive (and reallocates as it does)."""
    return tuple(part for part in name.split("/") if part not in ("", "."))


def _base(name: str) -> str:
    parts = _parts(name)
    return parts[-1] if parts else ""


def _check_entry_name(name: str) -> None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise _bad_file(f"archive entry {name!r} has an absolute path", "unsafe_archive")
    if ".." in _parts(name.replace("\\", "/")):
        raise _bad_file(f"archive entry {name!r} points outside the archive ('..')", "unsafe_archive")


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar"  # gzip: only tar.gz is accepted, checked when the tar is opened
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise _bad_file("not a zip, tar, tar.gz or npz archive", "unsupported_file")


class EntryRefused(Exception):
    """One archive entry inflates past a limit; the rest of the archive may still be read."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Inflation:
    """What an archive inflates to, counted entry by entry against the limits: the sizes its headers declare at
    upload (``declare``), the bytes actually read at ingest (``read``). An entry over its own limits raises
    ``EntryRefused``; the archive over ``max_inflated_bytes`` or the compression ratio raises ``Problem``."""

    def __init__(self, limits: Limits, archive_bytes: int, *, entry_limit: bool = True) -> None:
        self.limits = limits
        self.archive_bytes = archive_bytes
        self.entry_limit = entry_limit  # off for an npz's arrays, which are streamed, never held whole
        self.total = 0

    def _count(self, size: int, compressed: int | None, added: int) -> None:
        """An entry has inflated to ``size`` bytes so far, ``added`` of them just now, from ``compressed``
        bytes (None inside a tar.gz, whose gzip stream is one for all entries)."""
        limits = self.limits
        if self.entry_limit and size > limits.max_entry_bytes:
            raise EntryRefused(
                "entry_too_large", f"inflates to more than the per-entry limit of {limits.max_entry_bytes} bytes"
            )
        if compressed is not None and size > limits.ratio_budget(compressed):
            raise EntryRefused("compression_ratio", _too_compressed(compressed, limits))
        self.total += added
        if self.total > limits.max_inflated_bytes:
            raise _bad_file(
                f"archive inflates to more than the limit of {limits.max_inflated_bytes} bytes", "archive_too_large"
            )
        if self.total > limits.ratio_budget(self.archive_bytes):
            raise _bad_file(f"archive {_too_compressed(self.archive_bytes, limits)}", "compression_ratio")

    def declare(self, name: str, size: int, compressed: int | None) -> None:
        """Count an entry by the size its header declares. Raises ``Problem`` (422 naming ``file``)."""
        try:
            self._count(size, compressed, size)
        except EntryRefused as exc:
            raise _bad_file(f"archive entry {name!r} {exc.reason}", exc.code) from None

    def read(self, stream: IO[bytes], compressed: int | None) -> bytes:
        """An entry's bytes, read in chunks and counted as they inflate: never more than ``max_entry_bytes`` + 1
        of them, whatever its header says."""
        cap = self.limits.max_entry_bytes
        parts: list[bytes] = []
        size = 0
        while chunk := stream.read(min(READ_CHUNK, cap + 1 - size)):
            size += len(chunk)
            self._count(size, compressed, len(chunk))
            parts.append(chunk)
        return b"".join(parts)


def _too_compressed(compressed: int, limits: Limits) -> str:
    return (
        f"inflates to more than {limits.max_compression_ratio:g} times its {compressed} compressed bytes "
        "(a decompression bomb?)"
    )


# npz ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NpzImages:
    """Where an npz's ``images`` array lies in ``images.npy``, and the array a dataset stores from it."""

    shape: tuple[int, ...]  # (N, H, W) or (N, H, W, C)
    offset: int  # of the first pixel, after the npy header
    stored_shape: tuple[int, int, int, int]  # (N, C, H, W): alpha dropped, long side capped

    @property
    def channels(self) -> int:
        """Per pixel, as stored in the npz."""
        return self.shape[3] if len(self.shape) == 4 else 1

    @property
    def image_bytes(self) -> int:
        return prod(self.shape[1:])


def _npy_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """An ``.npy`` entry's shape, Fortran order, dtype and data offset, from its header alone."""
    with zf.open(name) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        return shape, fortran, dtype, f.tell()


def _npz_stored_shape(shape: tuple[int, ...], max_side: int) -> tuple[int, int, int, int]:
    n, h, w = shape[:3]
    channels = 1 if len(shape) == 3 or shape[3] == 1 else 3
    scale = min(1.0, max_side / max(h, w))
    return n, channels, max(1, round(h * scale)), max(1, round(w * scale))


def _npz_images(zf: zipfile.ZipFile, limits: Limits) -> NpzImages:
    """Check an npz's arrays from their headers and sizes. Raises ``Problem`` (422 naming ``file``) for a
    missing, mistyped or misshapen array, a header that does not match the bytes stored, images over the pixel
    limit, more images than ``max_archive_entries``, or a stored array over ``max_dataset_bytes``."""
    infos = {i.filename: i for i in zf.infolist()}
    if "images.npy" not in infos:
        raise _bad_file("npz archive has no 'images' array")
    try:
        shape, fortran, dtype, offset = _npy_header(zf, "images.npy")
    except ZIP_ERRORS as exc:
        raise _bad_file(f"npz 'images' array is unreadable: {exc}", "corrupt_file") from None
    if dtype != np.uint8:
        raise _bad_file(f"npz 'images' must be uint8, got {dtype}")
    if (
        len(shape) not in (3, 4)
        or (len(shape) == 4 and shape[3] not in (1, 3, 4))
        or any(not isinstance(d, int) or d < 1 for d in shape)
    ):
        raise _bad_file(f"npz 'images' must have shape (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got {shape}")
    if fortran:
        raise _bad_file("npz 'images' is stored in Fortran order; save np.ascontiguousarray(images)")
    stored = infos["images.npy"].file_size - offset
    if prod(shape) != stored:
        raise _bad_file(
            f"npz 'images' header declares shape {shape} ({prod(shape)} bytes) but the array holds {stored} bytes",
            "corrupt_file",
        )
    if shape[1] * shape[2] > limits.max_image_pixels:
        raise _bad_file(
            f"npz images have {shape[1]}×{shape[2]} pixels, over the limit of {limits.max_image_pixels}",
            "too_many_pixels",
        )
    if shape[0] > limits.max_archive_entries:
        raise _bad_file(
            f"npz has {shape[0]} images, over the limit of {limits.max_archive_entries}", "too_many_entries"
        )
    stored_shape = _npz_stored_shape(shape, limits.stored_max_side)
    if prod(stored_shape) > limits.max_dataset_bytes:
        raise _bad_file(
            f"npz images would be stored as {stored_shape} ({prod(stored_shape)} bytes), over the limit of "
            f"{limits.max_dataset_bytes}",
            "dataset_too_large",
        )
    if "labels.npy" in infos:
        try:
            lshape, _, ldtype, loffset = _npy_header(zf, "labels.npy")
        except ZIP_ERRORS as exc:
            raise _bad_file(f"npz 'labels' array is unreadable: {exc}", "corrupt_file") from None
        if lshape != (shape[0],) or ldtype.kind not in "iu" or ldtype.itemsize > 8:
            raise _bad_file(f"npz 'labels' must be integers of shape ({shape[0]},), got {ldtype} {lshape}")
        if shape[0] * ldtype.itemsize != infos["labels.npy"].file_size - loffset:
            raise _bad_file("npz 'labels' header does not match the bytes stored", "corrupt_file")
    return NpzImages(shape, offset, stored_shape)


# Inspection --------------------------------------------------------------------------------------------


def _declare_zip(files: list[zipfile.ZipInfo], archive_bytes: int, limits: Limits, *, npz: bool) -> None:
    """Check a zip's entries by the sizes its directory declares (an npz's arrays are streamed, so only their
    total counts). Raises ``Problem`` (422 naming ``file``)."""
    inflation = Inflation(limits, archive_bytes, entry_limit=not npz)
    for info in files:
        inflation.declare(info.filename, info.file_size, info.compress_size)


def _overlapping(files: list[zipfile.ZipInfo]) -> bool:
    """Whether entries share compressed data, which lets a small zip inflate quadratically: each entry's data
    (after its 30-byte local header; the name is left out, erring towards no overlap) must end before the next
    entry starts."""
    spans = sorted((i.header_offset, i.header_offset + 30 + i.compress_size) for i in files)
    return any(end > start for (_, end), (start, _) in pairwise(spans))


def _inspect_zip(path: Path, limits: Limits) -> UploadInfo:
    archive_bytes = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > limits.max_archive_entries:
            raise _bad_file(
                f"archive has {len(infos)} entries, over the limit of {limits.max_archive_entries}",
                "too_many_entries",
            )
        for info in infos:
            _check_entry_name(info.filename)
        files = [i for i in infos if not i.is_dir()]
        if _overlapping(files):
            raise _bad_file("archive entries overlap (they share compressed data)", "unsafe_archive")
        npz = bool(files) and all(i.filename.endswith(".npy") for i in files)  # an .npz: a zip of .npy arrays
        _declare_zip(files, archive_bytes, limits, npz=npz)
        if npz:
            return UploadInfo("npz", _npz_images(zf, limits).shape[0])
        return UploadInfo("zip", len(files))


def _inspect_tar(path: Path, limits: Limits) -> UploadInfo:
    count = 0
    inflation = Inflation(limits, path.stat().st_size)
    with tarfile.open(path, mode="r:*", errors=TAR_NAME_ERRORS) as tf:
        for member in tf:  # each header as it comes: a bomb stops the walk through its gzip stream early
            count += 1
            if count > limits.max_archive_entries:
                raise _bad_file(f"archive has more than {limits.max_archive_entries} entries", "too_many_entries")
            _check_entry_name(member.name)
            if member.issym() or member.islnk() or member.isdev() or member.isfifo():
                raise _bad_file(
                    f"archive entry {member.name!r} is a link or device; only files and folders are allowed",
                    "unsafe_archive",
                )
            inflation.declare(member.name, member.size, None)
    return UploadInfo("tar", count)


def inspect_upload(path: Path, limits: Limits) -> UploadInfo:
    """Recognise and check an uploaded archive without decoding images. Raises ``Problem`` (422)."""
    kind = _sniff(path)
    if kind == "zip":
        try:
            return _inspect_zip(path, limits)
        except ZIP_ERRORS as exc:
            raise _bad_file(f"corrupt zip archive: {exc}", "corrupt_file") from None
    try:
        return _inspect_tar(path, limits)
    except TAR_ERRORS as exc:
        raise _bad_file(f"corrupt tar archive: {exc}", "corrupt_file") from None


# Decoding ----------------------------------------------------------------------------------------------


def stored_size(sizes: list[tuple[int, int]], max_side: int) -> tuple[int, int]:
    """The (H, W) a dataset is stored at, from its images' (W, H) sizes: their own size when they all
    agree (long side capped at ``max_side``), else a square at the median short side (capped)."""
    if len(set(sizes)) == 1:
        w, h = sizes[0]
        scale = min(1.0, max_side / max(w, h))
        return max(1, round(h * scale)), max(1, round(w * scale))
    side = int(min(max_side, np.median([min(w, h) for w, h in sizes])))
    return side, side


@dataclass
class _Entry:
    """A file of an archive: its position among the archive's files, its name, and its bytes, or None with
    the reason it was refused while being read."""

    index: int
    name: str
    data: bytes | None
    reason: str = ""


def _iter_archive(path: Path, fmt: str, limits: Limits, wanted: Callable[[int, str], bool]) -> Iterator[_Entry]:
    """The ``wanted`` files of an archive, one at a time, each read under ``Inflation``'s limits. Raises
    ``Problem`` when the archive as a whole crosses a limit or cannot be read on."""
    inflation = Inflation(limits, path.stat().st_size)
    if fmt == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                for index, info in enumerate(i for i in zf.infolist() if not i.is_dir()):
                    if not wanted(index, info.filename):
                        continue
                    try:
                        with zf.open(info) as f:
                            entry = _Entry(index, info.filename, inflation.read(f, info.compress_size))
                    except EntryRefused as exc:
                        entry = _Entry(index, info.filename, None, exc.reason)
                    except ZIP_ERRORS as exc:  # this entry's data only: the next has its own offset
                        entry = _Entry(index, info.filename, None, f"corrupt entry: {exc}")
                    yield entry
        except ZIP_ERRORS as exc:
            raise _bad_file(f"corrupt zip archive: {exc}", "corrupt_file") from None
        return
    try:
        with tarfile.open(path, mode="r:*", errors=TAR_NAME_ERRORS) as tf:
            for index, member in enumerate(m for m in tf if m.isfile()):
                if not wanted(index, member.name):
                    continue
                stream = tf.extractfile(member)
                assert stream is not None  # a regular file
                try:
                    entry = _Entry(index, member.name, inflation.read(stream, None))
                except EntryRefused as exc:
                    entry = _Entry(index, member.name, None, exc.reason)
                yield entry
    except TAR_ERRORS as exc:  # a tar's entries are one stream: past a corrupt one, nothing can be read
        raise _bad_file(f"corrupt tar archive: {exc}", "corrupt_file") from None


def _skipped(name: str) -> bool:
    base = _base(name)
    return name.startswith(IGNORED_PREFIXES) or base.startswith(".") or base == "Thumbs.db"


def _strip_root(names: list[str]) -> tuple[list[str], str]:
    """Drop a single wrapping folder when everything inside it sits in sub-folders (``data/cat/1.png``)."""
    parts = [_parts(n) for n in names]
    tops = {p[0] for p in parts}
    if len(tops) == 1 and all(len(p) >= 3 for p in parts):
        return ["/".join(p[1:]) for p in parts], next(iter(tops)) + "/"
    return names, ""


def _read_labels_csv(data: bytes) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8", errors="replace"))))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    return {r[0].strip(): r[1].strip() for r in rows if len(r) >= 2 and r[0].strip()}


def _finish(
    images: np.ndarray, names: list[str], label_names: list[str | None], rejected: list[dict[str, str]]
) -> DecodeResult:
    classes = sorted({n for n in label_names if n is not None})
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[n] if n is not None else -1 for n in label_names], dtype=np.int64) if classes else None
    return DecodeResult(ImageArray(images, labels, names, classes), rejected[:MAX_REJECTED_LISTED], len(rejected))


def _check_dataset_bytes(shape: tuple[int, ...], limits: Limits) -> None:
    if prod(shape) > limits.max_dataset_bytes:
        raise _bad_file(
            f"the images would be stored as {shape} uint8 ({prod(shape)} bytes), over the limit of "
            f"{limits.max_dataset_bytes}",
            "dataset_too_large",
        )


def _decode_archive(path: Path, fmt: str, limits: Limits, images_path: Path, progress: Progress) -> DecodeResult:
    rejected: list[dict[str, str]] = []
    labels_csv: dict[str, str] = {}
    # Pass 1: headers only, to choose the stored size and channels and to reject non-images early.
    candidates: set[int] = set()
    sizes: list[tuple[int, int]] = []
    colour = False
    for entry in _iter_archive(path, fmt, limits, lambda _, name: not _skipped(name)):
        progress(0.0)  # the number of entries is known only at the end of this pass
        if entry.data is None:
            rejected.append({"file": entry.name, "reason": entry.reason})
        elif _base(entry.name).lower() == "labels.csv":
            labels_csv = _read_labels_csv(entry.data)
        else:
            try:
                im = open_image(entry.data, limits.max_image_pixels)
            except ImageRefused as exc:
                rejected.append({"file": entry.name, "reason": str(exc)})
                continue
            candidates.add(entry.index)
            sizes.append(im.size)
            colour = colour or im.mode not in GRAY_MODES
    if not candidates:
        return DecodeResult(ImageArray(np.zeros((0, 1, 1, 1), np.uint8), None, [], []), rejected, len(rejected))
    channels = 3 if colour else 1
    size = stored_size(sizes, limits.stored_max_side)
    _check_dataset_bytes((len(candidates), channels, *size), limits)
    # Pass 2: decode each image once, straight into the array on disk (cut to the images kept at the end).
    kept: list[str] = []
    with NpyWriter(images_path, len(candidates), (channels, *size)) as writer:
        for done, entry in enumerate(_iter_archive(path, fmt, limits, lambda index, _: index in candidates)):
            progress(done / len(candidates))
            try:
                if entry.data is None:
                    raise ImageRefused(entry.reason)
                image = decode_fitted(open_image(entry.data, limits.max_image_pixels), channels, size)
            except ImageRefused as exc:
                rejected.append({"file": entry.name, "reason": str(exc)})
                continue
            writer.write(image[None])
            kept.append(entry.name)
        images = writer.finish()
    stripped, _root = _strip_root(kept)
    label_names: list[str | None] = []
    for original, rel in zip(kept, stripped, strict=True):
        csv_label = labels_csv.get(rel) or labels_csv.get(original)
        if csv_label:
            label_names.append(csv_label)
        else:
            parts = _parts(rel)
            label_names.append(parts[0] if len(parts) > 1 else None)
    return _finish(images, kept, label_names, rejected)


def _read_into(stream: IO[bytes], out: np.ndarray, what: str) -> None:
    """Fill ``out`` from ``stream`` a chunk at a time (so nothing larger than a chunk is ever allocated)."""
    view = out.data.cast("B")  # out is C-contiguous: a batch, or a leading slice of it
    filled = 0
    while filled < len(view):
        chunk = stream.read(min(READ_CHUNK, len(view) - filled))
        if not chunk:
            raise _bad_file(f"npz {what} ends {len(view) - filled} bytes early", "corrupt_file")
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)


def _decode_npz(path: Path, limits: Limits, images_path: Path, progress: Progress) -> DecodeResult:
    """The npz's images, copied batch by batch into the stored array on disk (fitted as they come), so memory
    is one batch, whether the npz was saved compressed or not."""
    try:
        with zipfile.ZipFile(path) as zf:
            _declare_zip([i for i in zf.infolist() if not i.is_dir()], path.stat().st_size, limits, npz=True)
            layout = _npz_images(zf, limits)
            n, channels, h, w = layout.stored_shape
            per_batch = max(1, NPZ_BATCH_BYTES // layout.image_bytes)
            batch = np.empty((min(per_batch, n), *layout.shape[1:3], layout.channels), np.uint8)
            with zf.open("images.npy") as f, NpyWriter(images_path, n, (channels, h, w)) as writer:
                f.seek(layout.offset)
                for start in range(0, n, per_batch):
                    progress(start / n)
                    count = min(per_batch, n - start)
                    _read_into(f, batch[:count], "'images'")
                    writer.write(resize_array(batch[:count].transpose(0, 3, 1, 2)[:, :channels], (h, w)))
                images = writer.finish()
            raw_labels = None
            if "labels.npy" in zf.namelist():
                with zf.open("labels.npy") as f:
                    raw_labels = np.lib.format.read_array(f, allow_pickle=False)
    except ZIP_ERRORS as exc:
        raise _bad_file(f"corrupt npz archive: {exc}", "corrupt_file") from None
    names = [f"images[{i}]" for i in range(n)]
    label_names: list[str | None] = (
        [str(v) if v >= 0 else None for v in raw_labels.tolist()] if raw_labels is not None else [None] * n
    )
    result = _finish(images, names, label_names, [])
    if result.data.labels is not None and raw_labels is not None:
        # Keep numeric class order (2 < 10) rather than string order.
        classes = sorted({int(v) for v in raw_labels.tolist() if v >= 0})
        lookup = {c: i for i, c in enumerate(classes)}
        result.data.labels = np.array([lookup.get(int(v), -1) for v in raw_labels], dtype=np.int64)
        result.data.classes = [str(c) for c in classes]
    return result


def decode_upload(
    path: Path, fmt: str, limits: Limits, images_path: Path | None = None, progress: Progress | None = None
) -> DecodeResult:
    """Decode an inspected upload, its images stored with their long side at most ``limits.stored_max_side``,
    into the ``.npy`` file ``images_path`` (None: an anonymous temporary file), which the result maps. The result
    may hold zero images (all rejected). Raises ``Problem`` when the upload as a whole
    crosses a limit or turns out corrupt (its ``code`` and ``detail`` say which), leaving no file behind.
    ``progress`` is called with the fraction of images decoded (0 while the archive is first read) before every
    image or batch; what it raises stops the decoding, also leaving no file behind."""
    with npy_target(images_path) as target:
        if fmt == "npz":
            return _decode_npz(path, limits, target, progress or _ignore)
        return _decode_archive(path, fmt, limits, target, progress or _ignore)


def class_counts(data: ImageArray) -> list[dict[str, object]]:
    if data.labels is None:
        return []
    counts = Counter(int(v) for v in data.labels if v >= 0)
    return [{"name": name, "count": counts.get(i, 0)} for i, name in enumerate(data.classes)]
