"""Uploads: ``inspect_upload`` checks an archive in the request from headers and entry lists only (4xx before
anything is stored); ``decode_upload`` decodes every image once in the ingest job into (N, C, H, W) uint8,
rejecting non-images, corrupt files and oversized ones with a reason."""

from __future__ import annotations

import csv
import io
import tarfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
from PIL import Image

from api.core.problems import Problem, field_error
from ssl_core.data import ImageArray, fit_image, resize_array

Format = Literal["zip", "tar", "npz"]
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
IGNORED_PREFIXES = ("__MACOSX/",)
MAX_REJECTED_LISTED = 1000
# Archives whose entries would inflate beyond this many times the upload limit are refused as bombs.
MAX_INFLATION = 20

# PIL's own decompression-bomb guard is replaced by our explicit pixel limit.
Image.MAX_IMAGE_PIXELS = None


@dataclass
class Limits:
    max_upload_bytes: int
    max_image_pixels: int
    max_archive_entries: int


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


def _check_entry_name(name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise _bad_file(f"archive entry {name!r} has an absolute path", "unsafe_archive")
    if ".." in p.parts:
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


def _npy_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    with zf.open(name) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return shape, dtype


def _inspect_npz(zf: zipfile.ZipFile, limits: Limits) -> UploadInfo:
    names = set(zf.namelist())
    if "images.npy" not in names:
        raise _bad_file("npz archive has no 'images' array")
    try:
        shape, dtype = _npy_header(zf, "images.npy")
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _bad_file(f"npz 'images' array is unreadable: {exc}", "corrupt_file") from None
    if dtype != np.uint8:
        raise _bad_file(f"npz 'images' must be uint8, got {dtype}")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)) or 0 in shape:
        raise _bad_file(f"npz 'images' must have shape (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got {shape}")
    if shape[1] * shape[2] > limits.max_image_pixels:
        raise _bad_file(
            f"npz images have {shape[1]}×{shape[2]} pixels, over the limit of {limits.max_image_pixels}",
            "too_many_pixels",
        )
    if "labels.npy" in names:
        try:
            lshape, ldtype = _npy_header(zf, "labels.npy")
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise _bad_file(f"npz 'labels' array is unreadable: {exc}", "corrupt_file") from None
        if lshape != (shape[0],) or ldtype.kind not in "iu":
            raise _bad_file(f"npz 'labels' must be integers of shape ({shape[0]},), got {ldtype} {lshape}")
    return UploadInfo("npz", shape[0])


def inspect_upload(path: Path, limits: Limits) -> UploadInfo:
    """Recognise and check an uploaded archive without decoding images. Raises ``Problem`` (422)."""
    kind = _sniff(path)
    budget = limits.max_upload_bytes * MAX_INFLATION
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                if len(infos) > limits.max_archive_entries:
                    raise _bad_file(
                        f"archive has {len(infos)} entries, over the limit of {limits.max_archive_entries}",
                        "too_many_entries",
                    )
                for info in infos:
                    _check_entry_name(info.filename)
                if sum(i.file_size for i in infos) > budget:
                    raise _bad_file(
                        f"archive inflates to more than {MAX_INFLATION}× the upload limit", "archive_too_large"
                    )
                files = [i.filename for i in infos if not i.is_dir()]
                if files and all(name.endswith(".npy") for name in files):  # an .npz: a zip of .npy arrays
                    return _inspect_npz(zf, limits)
                return UploadInfo("zip", sum(1 for i in infos if not i.is_dir()))
        except zipfile.BadZipFile as exc:
            raise _bad_file(f"corrupt zip archive: {exc}", "corrupt_file") from None
    try:
        count, total = 0, 0
        with tarfile.open(path, mode="r:*") as tf:
            for member in tf:
                count += 1
                if count > limits.max_archive_entries:
                    raise _bad_file(f"archive has more than {limits.max_archive_entries} entries", "too_many_entries")
                _check_entry_name(member.name)
                if member.issym() or member.islnk() or member.isdev() or member.isfifo():
                    raise _bad_file(
                        f"archive entry {member.name!r} is a link or device; only files and folders are allowed",
                        "unsafe_archive",
                    )
                total += member.size
                if total > budget:
                    raise _bad_file(
                        f"archive inflates to more than {MAX_INFLATION}× the upload limit", "archive_too_large"
                    )
        return UploadInfo("tar", count)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
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


def _open_image(data: bytes, max_pixels: int) -> tuple[Image.Image | None, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - PIL raises many types for non-images
        return None, "not an image (format not recognised)"
    if im.width * im.height > max_pixels:
        return None, f"too many pixels ({im.width}×{im.height} > {max_pixels})"
    return im, ""


def _iter_archive(path: Path, fmt: str) -> Iterator[tuple[str, bytes]]:
    if fmt == "zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    try:
                        yield info.filename, zf.read(info)
                    except (zipfile.BadZipFile, OSError, EOFError) as exc:
                        yield info.filename, f"\0corrupt entry: {exc}".encode()
    else:
        with tarfile.open(path, mode="r:*") as tf:
            for member in tf:
                if member.isfile():
                    f = tf.extractfile(member)
                    yield member.name, f.read() if f is not None else b""


def _skipped(name: str) -> bool:
    base = PurePosixPath(name).name
    return name.startswith(IGNORED_PREFIXES) or base.startswith(".") or base == "Thumbs.db"


def _strip_root(names: list[str]) -> tuple[list[str], str]:
    """Drop a single wrapping folder when everything inside it sits in sub-folders (``data/cat/1.png``)."""
    parts = [PurePosixPath(n).parts for n in names]
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


def _decode_archive(path: Path, fmt: str, max_side: int, max_pixels: int) -> DecodeResult:
    rejected: list[dict[str, str]] = []
    labels_csv: dict[str, str] = {}
    # Pass 1: headers only, to choose the stored size and channels and to reject non-images early.
    candidates: list[str] = []
    sizes: list[tuple[int, int]] = []
    colour = False
    for name, data in _iter_archive(path, fmt):
        if _skipped(name):
            continue
        if PurePosixPath(name).name.lower() == "labels.csv":
            labels_csv = _read_labels_csv(data)
            continue
        im, reason = _open_image(data, max_pixels)
        if im is None:
            rejected.append({"file": name, "reason": reason})
            continue
        candidates.append(name)
        sizes.append(im.size)
        colour = colour or im.mode not in GRAY_MODES
    if not candidates:
        return DecodeResult(ImageArray(np.zeros((0, 1, 1, 1), np.uint8), None, [], []), rejected, len(rejected))
    channels = 3 if colour else 1
    size = stored_size(sizes, max_side)
    wanted = set(candidates)
    # Pass 2: decode each image once, straight into the array.
    images = np.empty((len(candidates), channels, *size), dtype=np.uint8)
    kept: list[str] = []
    for name, data in _iter_archive(path, fmt):
        if name not in wanted:
            continue
        im, reason = _open_image(data, max_pixels)
        try:
            assert im is not None, reason
            images[len(kept)] = fit_image(im, channels, size)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt image data
            rejected.append({"file": name, "reason": f"corrupt image: {exc}".strip()})
            continue
        kept.append(name)
    images = images[: len(kept)]
    stripped, _root = _strip_root(kept)
    label_names: list[str | None] = []
    for original, rel in zip(kept, stripped, strict=True):
        csv_label = labels_csv.get(rel) or labels_csv.get(original)
        if csv_label:
            label_names.append(csv_label)
        else:
            parts = PurePosixPath(rel).parts
            label_names.append(parts[0] if len(parts) > 1 else None)
    return _finish(images, kept, label_names, rejected)


def _decode_npz(path: Path, max_side: int) -> DecodeResult:
    with np.load(path, allow_pickle=False) as npz:
        images = npz["images"]
        raw_labels = npz["labels"] if "labels" in npz.files else None
    if images.ndim == 3:
        images = images[:, None]
    else:
        images = images.transpose(0, 3, 1, 2)
        if images.shape[1] == 4:
            images = images[:, :3]
    h, w = images.shape[-2:]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        images = resize_array(images, (max(1, round(h * scale)), max(1, round(w * scale))))
    names = [f"images[{i}]" for i in range(len(images))]
    label_names: list[str | None] = (
        [str(v) if v >= 0 else None for v in raw_labels.tolist()] if raw_labels is not None else [None] * len(images)
    )
    result = _finish(np.ascontiguousarray(images), names, label_names, [])
    if result.data.labels is not None and raw_labels is not None:
        # Keep numeric class order (2 < 10) rather than string order.
        classes = sorted({int(v) for v in raw_labels.tolist() if v >= 0})
        lookup = {c: i for i, c in enumerate(classes)}
        result.data.labels = np.array([lookup.get(int(v), -1) for v in raw_labels], dtype=np.int64)
        result.data.classes = [str(c) for c in classes]
    return result


def decode_upload(path: Path, fmt: str, *, max_side: int, max_pixels: int) -> DecodeResult:
    """Decode an inspected upload. The result may hold zero images (all rejected)."""
    if fmt == "npz":
        return _decode_npz(path, max_side)
    return _decode_archive(path, fmt, max_side, max_pixels)


def class_counts(data: ImageArray) -> list[dict[str, object]]:
    if data.labels is None:
        return []
    counts = Counter(int(v) for v in data.labels if v >= 0)
    return [{"name": name, "count": counts.get(i, 0)} for i, name in enumerate(data.classes)]
