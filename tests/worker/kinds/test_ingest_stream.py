"""Ingest streams: images are decoded into the stored ``.npy`` file one at a time, giving the same arrays as
decoding each image by hand, in memory that does not grow with the number of images, and an interrupted ingest
leaves no dataset behind."""

from __future__ import annotations

import io
import tarfile
import tracemalloc
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import api.core.ingest as ingest_module
from api.core.images import fit_image
from api.core.ingest import Limits, decode_upload
from api.core.settings import Settings
from ssl_core.data import ImageArray
from tests.api.bombs import npy_bytes, npz_of
from tests.helpers import make_zip, png_bytes
from tests.worker.helpers import get_job, ingest

DEFAULTS = Limits.from_settings(Settings())


def _truncated_png(seed: int) -> bytes:
    """A PNG whose header opens (so it passes the first pass) and whose pixels do not decode."""
    data = png_bytes(np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    return data[: len(data) // 2]


def _files() -> dict[str, bytes]:
    rng = np.random.default_rng(11)
    files = {
        "set/cat/0.png": png_bytes(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)),
        "set/cat/1.png": png_bytes(rng.integers(0, 256, (24, 24), dtype=np.uint8)),  # grey among colour
        "set/dog/broken.png": _truncated_png(1),
        "set/dog/2.png": png_bytes(rng.integers(0, 256, (40, 18, 3), dtype=np.uint8)),
        "set/notes.txt": b"not an image",
        "set/dog/3.png": png_bytes(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)),
    }
    return files


def _expected(files: dict[str, bytes], names: list[str], size: tuple[int, int]) -> np.ndarray:
    """Each image decoded by PIL and fitted on its own: what ingest stored before it streamed."""
    return np.stack([fit_image(Image.open(io.BytesIO(files[n])), 3, size) for n in names])


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_an_archive_decodes_into_a_valid_npy_file_equal_to_images_decoded_one_by_one(tmp_path: Path, fmt: str):
    files = _files()
    upload = tmp_path / "upload"
    upload.write_bytes(make_zip(files) if fmt == "zip" else _tar(files))
    out = tmp_path / "images.npy"
    result = decode_upload(upload, fmt, DEFAULTS, out)
    kept = ["set/cat/0.png", "set/cat/1.png", "set/dog/2.png", "set/dog/3.png"]
    assert result.data.filenames == kept
    assert sorted(r["file"] for r in result.rejected) == ["set/dog/broken.png", "set/notes.txt"]
    # Mixed sizes: a square at the median short side of the 5 images whose headers opened (20, 24, 20, 18, 16).
    want = _expected(files, kept, (20, 20))
    np.testing.assert_array_equal(result.data.images, want)
    assert isinstance(result.data.images, np.memmap)
    # The broken image was counted in the first pass: the file is cut to the 4 images kept.
    np.testing.assert_array_equal(np.load(out, mmap_mode="r"), want)
    np.testing.assert_array_equal(np.load(out), want)
    assert result.data.labels is not None
    assert result.data.labels.tolist() == [0, 0, 1, 1]
    assert result.data.classes == ["cat", "dog"]


def test_without_a_path_the_images_are_in_an_unlinked_temporary_file(tmp_path: Path):
    files = _files()
    upload = tmp_path / "upload.zip"
    upload.write_bytes(make_zip(files))
    result = decode_upload(upload, "zip", DEFAULTS)
    assert isinstance(result.data.images, np.memmap)
    assert not Path(str(result.data.images.filename)).exists()
    np.testing.assert_array_equal(result.data.images, _expected(files, result.data.filenames, (20, 20)))


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_an_npz_is_copied_batch_by_batch_into_the_file(tmp_path: Path, monkeypatch, compression: int):
    monkeypatch.setattr(ingest_module, "NPZ_BATCH_BYTES", 3 * 10 * 8 * 4)  # batches of 3 images: 7 = 3 + 3 + 1
    images = np.random.default_rng(12).integers(0, 256, (7, 10, 8, 4), dtype=np.uint8)  # RGBA: alpha dropped
    labels = np.array([3, 10, -1, 3, 2, 10, 3])
    buf = io.BytesIO()
    np.save(buf, labels)
    upload = tmp_path / "upload.npz"
    upload.write_bytes(
        npz_of({"images": npy_bytes(images.shape, images.tobytes()), "labels": buf.getvalue()}, compression)
    )
    out = tmp_path / "images.npy"
    result = decode_upload(upload, "npz", DEFAULTS, out)
    want = np.ascontiguousarray(images[..., :3].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(np.load(out, mmap_mode="r"), want)
    assert result.data.classes == ["2", "3", "10"]  # numeric order
    assert result.data.labels is not None
    assert result.data.labels.tolist() == [1, 2, -1, 1, 0, 2, 1]
    # Stored smaller than the npz: each batch shrunk with antialiased bilinear filtering.
    small = decode_upload(upload, "npz", replace(DEFAULTS, stored_max_side=5), out)
    x = torch.from_numpy(want).float()
    resized = F.interpolate(x, size=(5, 4), mode="bilinear", antialias=True, align_corners=False)
    np.testing.assert_array_equal(small.data.images, resized.round().clamp(0, 255).to(torch.uint8).numpy())


def test_a_failure_mid_decode_leaves_no_file(tmp_path: Path, monkeypatch):
    files = _files()
    upload = tmp_path / "upload.zip"
    upload.write_bytes(make_zip(files))
    calls = []

    def failing(im: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("the worker is out of memory")
        return fit_image(im, channels, size)

    monkeypatch.setattr(ingest_module, "decode_fitted", failing)
    out = tmp_path / "images.npy"
    with pytest.raises(MemoryError):
        decode_upload(upload, "zip", DEFAULTS, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [upload]


def test_progress_is_told_before_every_image_and_can_stop_the_decoding(tmp_path: Path, monkeypatch):
    upload = tmp_path / "upload.zip"
    upload.write_bytes(make_zip(_files()))
    out = tmp_path / "images.npy"
    told: list[float] = []
    decode_upload(upload, "zip", DEFAULTS, out, told.append)
    # First pass: 6 entries, their number unknown until the end; second: the 5 whose headers opened.
    assert told == [0.0] * 6 + [0 / 5, 1 / 5, 2 / 5, 3 / 5, 4 / 5]

    monkeypatch.setattr(ingest_module, "NPZ_BATCH_BYTES", 3 * 10 * 8 * 3)  # batches of 3 images: 7 = 3 + 3 + 1
    npz = tmp_path / "upload.npz"
    images = np.zeros((7, 10, 8, 3), np.uint8)
    npz.write_bytes(npz_of({"images": npy_bytes(images.shape, images.tobytes())}, zipfile.ZIP_STORED))
    told.clear()
    decode_upload(npz, "npz", DEFAULTS, out, told.append)
    assert told == [0 / 7, 3 / 7, 6 / 7]

    class Stop(Exception):
        pass

    def stop_at_second_pass(fraction: float) -> None:
        if fraction > 0:
            raise Stop

    out.unlink()
    with pytest.raises(Stop):
        decode_upload(upload, "zip", DEFAULTS, out, stop_at_second_pass)
    assert not out.exists()


def _peak_bytes(fn):  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ingest_memory_does_not_grow_with_the_number_of_images(tmp_path: Path, monkeypatch):
    """tracemalloc sees numpy's allocations: holding the decoded dataset would cost n × 12 KiB (30 MiB)."""
    n, image_bytes = 2560, 3 * 64 * 64
    rng = np.random.default_rng(13)
    tile = png_bytes(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    upload = tmp_path / "upload.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        for i in range(n):
            zf.writestr(f"c{i % 2}/{i}.png", tile)
    result, peak = _peak_bytes(lambda: decode_upload(upload, "zip", DEFAULTS, tmp_path / "images.npy"))
    assert result.data.images.shape == (n, 3, 64, 64)
    assert peak < n * image_bytes / 8  # one batch, the readers' chunks and the entry list

    monkeypatch.setattr(ingest_module, "NPZ_BATCH_BYTES", 64 * image_bytes)
    images = np.broadcast_to(rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8), (n, 64, 64, 3))
    npz = tmp_path / "upload.npz"
    with zipfile.ZipFile(npz, "w") as zf, zf.open("images.npy", "w", force_zip64=True) as f:
        f.write(npy_bytes(images.shape, b""))
        for start in range(0, n, 64):
            f.write(np.ascontiguousarray(images[start : start + 64]).tobytes())
    result, peak = _peak_bytes(lambda: decode_upload(npz, "npz", DEFAULTS, tmp_path / "npz-images.npy"))
    assert result.data.images.shape == (n, 3, 64, 64)
    np.testing.assert_array_equal(result.data.images[-1], images[0].transpose(2, 0, 1))
    assert peak < n * image_bytes / 8  # one batch, the readers' chunks and the entry list


# Through the worker ------------------------------------------------------------------------------------


def _dataset_dirs(settings: Settings) -> list[str]:
    root = settings.artifacts / "datasets"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_an_interrupted_ingest_leaves_no_half_written_dataset(client, auth, run, settings, monkeypatch):
    calls = []

    def failing(im: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return fit_image(im, channels, size)

    monkeypatch.setattr(ingest_module, "decode_fitted", failing)
    ds = ingest(client, auth, run, make_zip(_files()))
    assert ds["status"] != "ready"
    assert get_job(client, auth, ds["ingest_job_id"])["status"] == "failed"
    assert _dataset_dirs(settings) == []  # neither the dataset nor its staging directory


def test_an_ingest_replaces_the_leftover_of_a_killed_one(client, auth, run, settings):
    files = _files()
    ds = client.post("/v1/datasets", headers=auth, files={"file": ("x.zip", make_zip(files))}, data={"name": "d"})
    dataset_id = ds.json()["id"]
    for name in (f"{dataset_id}.tmp", f"{dataset_id}.tmp-0123456789ab"):
        leftover = settings.artifacts / "datasets" / name
        leftover.mkdir(parents=True)
        (leftover / "images.npy").write_bytes(b"\x93NUMPY half-written")
    run(ds.json()["ingest_job_id"])
    assert client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()["status"] == "ready"
    assert _dataset_dirs(settings) == [dataset_id]
    data = ImageArray.load(settings.artifacts / "datasets" / dataset_id)
    np.testing.assert_array_equal(data.images, _expected(files, data.filenames, (20, 20)))


def test_deleting_a_dataset_removes_its_staging_directories(tmp_path: Path):
    from api.core.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path)
    target = store.dataset_dir("ds_a")
    for name in ("ds_a", "ds_a.tmp", "ds_a.tmp-0123456789ab", "ds_ab", "ds_ab.tmp-1"):
        (target.parent / name).mkdir(parents=True, exist_ok=True)
    store.remove_dataset("ds_a")
    assert sorted(p.name for p in target.parent.iterdir()) == ["ds_ab", "ds_ab.tmp-1"]
