"""Ingest under hostile input: limits enforced on the bytes actually inflated (whatever the headers say),
bounded memory, and every failure a reason or a clear code, never an internal error."""

from __future__ import annotations

import io
import struct
import tarfile
import tracemalloc
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api.core.ingest import Limits, decode_upload
from api.core.problems import Problem
from api.core.settings import Settings
from tests.api.bombs import MIB, npy_bytes, npz_of, tar_gz_of, zip_of
from tests.helpers import make_zip, png_bytes
from tests.worker.helpers import get_job, ingest

DEFAULTS = Limits.from_settings(Settings())


def _file(tmp_path: Path, data: bytes, name: str = "upload") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _peak_mib(fn):  # type: ignore[no-untyped-def]
    """``fn()`` and the peak of the Python and numpy memory it allocated, in MiB."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()


def test_a_bomb_entry_is_rejected_after_at_most_the_entry_limit(tmp_path):
    """The issue's 3 GiB entry, at ingest: refused once it passes 64 MiB, the rest of the archive decoded."""
    image = png_bytes(np.full((20, 30), 9, np.uint8))
    path = _file(tmp_path, zip_of([("a/1.png", image), ("a/bomb.png", 3072), ("a/2.png", image)]))
    result, peak = _peak_mib(lambda: decode_upload(path, "zip", DEFAULTS))
    assert result.data.filenames == ["a/1.png", "a/2.png"]
    assert result.rejected == [
        {"file": "a/bomb.png", "reason": f"inflates to more than the per-entry limit of {64 * MIB} bytes"}
    ]
    assert peak < 64 + 8  # the entry's first 64 MiB and a chunk, never the 3 GiB


@pytest.mark.parametrize("build", [zip_of, tar_gz_of], ids=["zip", "tar.gz"])
def test_entries_are_held_to_the_limits_the_ingest_runs_under(tmp_path, build):
    """Limits lowered after upload (or a header that lies) are enforced on the bytes read."""
    image = png_bytes(np.full((20, 30), 9, np.uint8))
    entries = [("a/1.png", image), ("a/big.bin", 16), ("a/2.png", image)]
    if build is tar_gz_of:  # members of zeros only: write the images as their own members first
        path = _file(tmp_path, _tar_gz_with_images(image))
        fmt = "tar"
    else:
        path = _file(tmp_path, build(entries))
        fmt = "zip"
    limits = replace(DEFAULTS, max_entry_bytes=MIB, max_compression_ratio=1e6)
    result, peak = _peak_mib(lambda: decode_upload(path, fmt, limits))
    assert result.data.filenames == ["a/1.png", "a/2.png"]
    assert [r["file"] for r in result.rejected] == ["a/big.bin"]
    assert result.rejected[0]["reason"] == f"inflates to more than the per-entry limit of {MIB} bytes"
    assert peak < 8  # the entry's first MiB and the readers' buffers, not its 16 MiB


def _tar_gz_with_images(image: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in [("a/1.png", image), ("a/big.bin", bytes(16 * MIB)), ("a/2.png", image)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("overrides", "code"),
    [({"max_inflated_bytes": 2 * MIB}, "archive_too_large"), ({"max_compression_ratio": 1.0}, "compression_ratio")],
)
def test_an_archive_over_its_whole_limits_fails_the_ingest_with_a_clear_code(tmp_path, overrides, code):
    """Four entries of 1 MiB of 4-bit noise (compressing about 2×), each within the per-entry limits."""
    noise = np.random.default_rng(0).integers(0, 16, MIB, dtype=np.uint8).tobytes()
    path = _file(tmp_path, zip_of([(f"{i}.bin", noise) for i in range(4)]))
    with pytest.raises(Problem) as caught:
        decode_upload(path, "zip", replace(DEFAULTS, **overrides))
    assert caught.value.code == code


def test_a_compressed_npz_is_decoded_batch_by_batch(tmp_path):
    """64 MiB of images in a compressed npz, stored at 64 px: memory is a batch, not the whole array."""
    rng = np.random.default_rng(0)
    ramp = np.arange(1024, dtype=np.uint8)[None, None, :] + rng.integers(0, 2, (64, 1024, 1), dtype=np.uint8)
    images = np.broadcast_to(ramp, (64, 1024, 1024))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("images.npy", npy_bytes(images.shape, images.tobytes()))
        zf.writestr("labels.npy", npy_bytes((64,), np.arange(64, dtype="<i8").tobytes(), descr="<i8"))
    path = _file(tmp_path, buf.getvalue())
    result, peak = _peak_mib(lambda: decode_upload(path, "npz", replace(DEFAULTS, stored_max_side=64)))
    assert result.data.images.shape == (64, 1, 64, 64)
    assert result.data.classes == [str(i) for i in range(64)]
    expected = images[:, ::16, ::16].astype(float)  # a ramp along x: downscaling keeps it a ramp
    assert np.abs(result.data.images[:, 0].astype(float) - expected).mean() < 10
    assert peak < 40, peak  # a 16 MiB batch and its copy; the whole array is 64 MiB


def test_an_npz_whose_header_lies_fails_the_ingest_as_corrupt(tmp_path):
    path = _file(tmp_path, npz_of({"images": npy_bytes((100_000, 4000, 4000), bytes(320))}))
    with pytest.raises(Problem) as caught:
        decode_upload(path, "npz", DEFAULTS)
    assert caught.value.code == "corrupt_file"


def _flag_entry(archive: bytes, name: str, *, flags: int = 0, method: int | None = None) -> bytes:
    """``archive`` with the general-purpose flags or the compression method of entry ``name`` rewritten in both
    its local header and its directory record."""
    data = bytearray(archive)
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = data.find(signature + b"")
        while at != -1:
            name_len = struct.unpack_from("<H", data, at + (26 if signature == b"PK\x03\x04" else 28))[0]
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if bytes(data[name_at : name_at + name_len]) == name.encode():
                struct.pack_into("<H", data, at + flag_at, struct.unpack_from("<H", data, at + flag_at)[0] | flags)
                if method is not None:
                    struct.pack_into("<H", data, at + method_at, method)
            at = data.find(signature, at + 4)
    return bytes(data)


def test_unreadable_zip_entries_are_rejected_with_a_reason(client, auth, run):
    """Encrypted entries, unknown compression and corrupt deflate data were internal errors."""
    image = png_bytes(np.full((20, 30), 9, np.uint8))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("ok.png", "secret.png", "odd.png"):
            zf.writestr(name, image)
        zf.writestr("broken.png", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    archive = _flag_entry(buf.getvalue(), "secret.png", flags=0x1)
    archive = _flag_entry(archive, "odd.png", method=99)
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo("broken.png")
    corrupt = bytearray(archive)
    start = info.header_offset + 30 + len("broken.png")
    corrupt[start : start + 8] = b"\xff" * 8  # an invalid deflate block type
    ds = ingest(client, auth, run, bytes(corrupt))
    assert ds["status"] == "ready", ds
    assert ds["num_images"] == 1
    reasons = {r["file"]: r["reason"] for r in ds["rejected"]}
    assert set(reasons) == {"secret.png", "odd.png", "broken.png"}
    assert all(reason.startswith("corrupt entry: ") for reason in reasons.values()), reasons


def _ico_hiding(size: int) -> bytes:
    """An ICO whose directory says 16×16 but whose image is a PNG of ``size``×``size``."""
    png = io.BytesIO()
    Image.new("L", (size, size)).save(png, "PNG")
    directory = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png.getvalue()), 22)
    return directory + png.getvalue()


def test_only_common_raster_formats_are_decoded(client, auth, run):
    ds = ingest(
        client, auth, run, make_zip({"ok.png": png_bytes(np.zeros((8, 8), np.uint8)), "x.ico": _ico_hiding(64)})
    )
    assert ds["num_images"] == 1
    assert ds["rejected"] == [
        {"file": "x.ico", "reason": "not an image in a supported format (PNG, JPEG, GIF, BMP, TIFF, WebP, PNM or TGA)"}
    ]


def test_a_limit_crossed_at_ingest_fails_the_dataset_with_its_code(client, auth, run, settings):
    noise = np.random.default_rng(0).integers(0, 16, MIB, dtype=np.uint8).tobytes()
    ds = client.post(
        "/v1/datasets",
        headers=auth,
        files={"file": ("x.zip", zip_of([(f"{i}.bin", noise) for i in range(4)]))},
        data={"name": "d"},
    ).json()
    settings.max_inflated_bytes = 2 * MIB  # lowered between upload and ingest
    run(ds["ingest_job_id"])
    ds = client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()
    assert ds["status"] == "failed"
    assert ds["error"]["code"] == "archive_too_large"
    assert get_job(client, auth, ds["ingest_job_id"])["error"]["code"] == "archive_too_large"


def test_a_failed_dataset_keeps_its_rejected_files(client, auth, run):
    ds = ingest(client, auth, run, make_zip({"a.txt": b"hello", "b/c.png": b"not a png"}))
    assert ds["status"] == "failed"
    assert ds["error"]["code"] == "no_images"
    assert ds["num_rejected"] == 2
    assert {r["file"] for r in ds["rejected"]} == {"a.txt", "b/c.png"}
    assert all(r["reason"].startswith("not an image") for r in ds["rejected"])


def test_tar_member_names_that_are_not_utf8_are_kept_readable(client, auth, run):
    """Undecodable name bytes used to become lone surrogates that made the dataset itself a 500 to read."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for name, data in [("caf\xe9/1.png", png_bytes(np.zeros((8, 8), np.uint8))), ("caf\xe9/2.txt", b"x")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    ds = ingest(client, auth, run, buf.getvalue())
    assert ds["status"] == "ready", ds
    assert ds["classes"] == [{"name": "caf\ufffd", "count": 1}]
    assert ds["rejected"][0]["file"] == "caf\ufffd/2.txt"
    assert client.get("/v1/datasets", headers=auth).status_code == 200
