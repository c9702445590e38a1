from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from api.core.models import Dataset, Job
from tests.api.bombs import npy_bytes, npz_of, tar_gz_of, zip_of
from tests.api.factories import ready_dataset, tenant_id
from tests.helpers import class_folder_zip, make_zip, png_bytes


def _upload(client, auth, data: bytes, filename: str = "images.zip", name: str | None = "set"):
    form = {"name": name} if name is not None else {}
    return client.post("/v1/datasets", headers=auth, files={"file": (filename, data)}, data=form)


def _counts(db_session) -> tuple[int, int]:
    with db_session() as s:
        return s.scalar(select(func.count()).select_from(Dataset)), s.scalar(select(func.count()).select_from(Job))


def _stored_files(settings) -> list[Path]:
    root = settings.artifacts
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_zip_creates_dataset_and_ingest_job(client, auth, db_session):
    r = _upload(client, auth, class_folder_zip())
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["id"].startswith("ds_")
    assert body["status"] == "ingesting"
    assert r.headers["location"] == f"/v1/datasets/{body['id']}"
    job = client.get(f"/v1/jobs/{body['ingest_job_id']}", headers=auth).json()
    assert job["kind"] == "ingest"
    assert job["status"] == "queued"
    assert client.get(f"/v1/datasets/{body['id']}", headers=auth).json()["name"] == "set"


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_upload_tar_and_tar_gz(client, auth, mode):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        data = png_bytes(np.zeros((8, 8), np.uint8))
        info = tarfile.TarInfo("a/x.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    r = _upload(client, auth, buf.getvalue(), "x.tar.gz")
    assert r.status_code == 202, r.text
    assert r.json()["source_format"] == "tar"


def test_upload_npz(client, auth):
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((5, 8, 8), np.uint8), labels=np.arange(5))
    r = _upload(client, auth, buf.getvalue(), "x.npz")
    assert r.status_code == 202, r.text
    assert r.json()["source_format"] == "npz"


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("a/link.png")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return info


def _abs_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("/etc/evil.png")
    info.size = 3
    return info


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


BAD_UPLOADS = [
    ("not an archive", b"hello, this is text", "unsupported_file"),
    ("corrupt zip", b"PK\x03\x04" + b"\x00" * 100, "corrupt_file"),
    ("corrupt tar.gz", b"\x1f\x8b\x08\x00" + b"\xff" * 50, "corrupt_file"),
    ("zip with ..", make_zip({"../evil.png": b"x"}), "unsafe_archive"),
    ("zip with absolute path", make_zip({"/abs/evil.png": b"x"}), "unsafe_archive"),
    ("tar with absolute path", _tar_with(_abs_member(), b"abc"), "unsafe_archive"),
    ("tar with symlink", _tar_with(_symlink()), "unsafe_archive"),
    ("npz without images", _npz(pixels=np.zeros((2, 4, 4), np.uint8)), "invalid_file"),
    ("npz float images", _npz(images=np.zeros((2, 4, 4), np.float32)), "invalid_file"),
    ("npz bad shape", _npz(images=np.zeros((2, 4), np.uint8)), "invalid_file"),
    ("npz bad labels", _npz(images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(3)), "invalid_file"),
    ("npz too many pixels", _npz(images=np.zeros((1, 6000, 5000), np.uint8)), "too_many_pixels"),
]


@pytest.mark.parametrize(("label", "data", "code"), BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_are_422_naming_file_and_leave_nothing(client, auth, db_session, settings, label, data, code):
    before = _counts(db_session)
    r = _upload(client, auth, data)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == code
    assert body["errors"][0]["field"] == "file"
    assert _counts(db_session) == before
    assert _stored_files(settings) == []
    assert client.get("/healthz").status_code == 200


def test_missing_name_and_file_are_named(client, auth):
    r = _upload(client, auth, class_folder_zip(), name=None)
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["name"]
    r = client.post("/v1/datasets", headers=auth, data={"name": "x"})
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["file"]


def test_blank_name_and_empty_file(client, auth):
    assert _upload(client, auth, class_folder_zip(), name="   ").json()["errors"][0]["field"] == "name"
    r = _upload(client, auth, b"")
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "file"


def test_nul_in_name_is_422_and_in_filename_is_dropped(client, auth, db_session):
    """PostgreSQL cannot store a NUL: a name with one is refused, a filename (only shown back) loses it."""
    r = _upload(client, auth, class_folder_zip(), name="a\0b")
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "name"
    assert _counts(db_session) == (0, 0)
    boundary, archive = "b0undary", class_folder_zip()
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nset\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a\0b.zip"\r\n\r\n'
        ).encode()
        + archive
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    r = client.post("/v1/datasets", headers=headers, content=body)
    assert r.status_code == 202, r.text
    assert r.json()["source_filename"] == "ab.zip"


def test_upload_over_limit_is_413_and_leaves_nothing(make_settings, db_session, new_key):
    from fastapi.testclient import TestClient

    from api.main import create_app

    settings = make_settings(max_upload_bytes=2048)
    with TestClient(create_app(settings, make_session=db_session)) as c:
        r = _upload(c, new_key(), class_folder_zip(n_per_class=20, size=32))
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert _stored_files(settings) == []


def test_chunked_upload_over_limit_is_413_while_streaming(make_settings, db_session, new_key):
    """Without a Content-Length the limit is enforced on the bytes as they arrive."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    settings = make_settings(max_upload_bytes=4096)
    boundary = "jagaboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()

    def body():
        yield head
        for _ in range(64):  # 4 MiB in 64 KiB chunks, far past the 4 KiB + 1 MiB limit
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**new_key(), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    with TestClient(create_app(settings, make_session=db_session)) as c:
        r = c.post("/v1/datasets", headers=headers, content=body())
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert r.status_code == 413, r.text
        assert r.json()["code"] == "request_too_large"
        assert c.get("/healthz").status_code == 200
    assert _stored_files(settings) == []
    assert _counts(db_session) == (0, 0)


def test_too_many_entries_is_refused(make_settings, db_session, new_key):
    from fastapi.testclient import TestClient

    from api.main import create_app

    settings = make_settings(max_archive_entries=3)
    with TestClient(create_app(settings, make_session=db_session)) as c:
        r = _upload(c, new_key(), class_folder_zip(n_per_class=2))
    assert r.status_code == 422
    assert r.json()["code"] == "too_many_entries"


def test_other_tenant_sees_404(client, auth, new_key):
    ds = _upload(client, auth, class_folder_zip()).json()
    other = new_key("globex")
    for method, path in [("GET", f"/v1/datasets/{ds['id']}"), ("DELETE", f"/v1/datasets/{ds['id']}")]:
        r = client.request(method, path, headers=other)
        assert r.status_code == 404, (method, path)
        assert r.json()["code"] == "not_found"
    assert client.get("/v1/datasets", headers=other).json()["data"] == []


def test_malformed_ids_are_404(client, auth):
    for bad in ["nope", "ds_zzz", "ds_" + "0" * 24, "../../etc/passwd"]:
        assert client.get(f"/v1/datasets/{bad}", headers=auth).status_code == 404


def test_delete_ready_dataset_removes_row_and_files(client, auth, db_session, settings):
    store = client.app.state.store
    ds = ready_dataset(db_session, store, tenant_id(db_session))
    assert store.dataset_dir(ds.id).exists()
    r = client.delete(f"/v1/datasets/{ds.id}", headers=auth)
    assert r.status_code == 204
    assert not store.dataset_dir(ds.id).exists()
    assert client.get(f"/v1/datasets/{ds.id}", headers=auth).status_code == 404


def test_delete_dataset_with_active_job_is_409(client, auth):
    ds = _upload(client, auth, class_folder_zip()).json()  # its ingest job is queued
    r = client.delete(f"/v1/datasets/{ds['id']}", headers=auth)
    assert r.status_code == 409
    assert r.json()["code"] == "dataset_in_use"


def test_list_datasets_paginates_newest_first(client, auth):
    ids = [_upload(client, auth, class_folder_zip(), name=f"s{i}").json()["id"] for i in range(3)]
    page = client.get("/v1/datasets?limit=2", headers=auth).json()
    assert [d["id"] for d in page["data"]] == ids[::-1][:2]
    assert page["has_more"]
    rest = client.get(f"/v1/datasets?limit=2&after={page['next_after']}", headers=auth).json()
    assert [d["id"] for d in rest["data"]] == [ids[0]]
    assert not rest["has_more"]
    assert client.get("/v1/datasets?limit=0", headers=auth).json()["errors"][0]["field"] == "limit"


@pytest.mark.parametrize("after", ["\0", "ds_\0", "é", "x" * 5000])
def test_list_cursor_that_is_not_an_id_is_422_naming_after(client, auth, after):
    r = client.get("/v1/datasets", params={"after": after}, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "after"


def test_zip_stored_entries_are_inspected_not_decoded(client, auth):
    """A zip whose entries are not images is accepted at upload: rejections are per file, at ingest."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/readme.txt", "hello")
    assert _upload(client, auth, buf.getvalue()).status_code == 202


# Hostile archives: refused from their headers before anything is stored -----------------------------------


def _npz_declaring(shape: tuple[int, ...], data: bytes, compression: int = zipfile.ZIP_STORED, **header) -> bytes:
    return npz_of({"images": npy_bytes(shape, data, **header)}, compression)


HOSTILE_UPLOADS = [
    # The bomb: 3 MB of zip, one deflated entry of 3 GiB.
    ("zip bomb", lambda: zip_of([("a/bomb.png", 3072)]), "entry_too_large", "'a/bomb.png' inflates to more than"),
    ("tar.gz bomb", lambda: tar_gz_of([("a/bomb.png", 3072)]), "entry_too_large", "'a/bomb.png' inflates to more"),
    ("entry over ratio", lambda: zip_of([("a/flat.bmp", 32)]), "compression_ratio", "'a/flat.bmp' inflates to more"),
    ("archive over ratio", lambda: zip_of([(f"{i}.bmp", 1) for i in range(40)]), "compression_ratio", "archive"),
    ("tar.gz over ratio", lambda: tar_gz_of([(f"{i}.bmp", 1) for i in range(40)]), "compression_ratio", "archive"),
    (
        "overlapping entries",
        lambda: zip_of([(f"{i}.png", 50) for i in range(8)], share_data=True),
        "unsafe_archive",
        "",
    ),
    # The lying npz: a header declaring 1.46 TiB over 320 bytes of pixels.
    ("npz lying header", lambda: _npz_declaring((100_000, 4000, 4000), bytes(320)), "corrupt_file", "(100000, 4000,"),
    (
        "compressed npz lying header",
        lambda: _npz_declaring((100_000, 4000, 4000), bytes(1 << 16), zipfile.ZIP_DEFLATED),
        "corrupt_file",
        "1600000000000 bytes",
    ),
    ("npz short by a byte", lambda: _npz_declaring((2, 8, 8), bytes(127)), "corrupt_file", "holds 127 bytes"),
    ("npz Fortran order", lambda: _npz_declaring((2, 8, 8), bytes(128), fortran_order=True), "invalid_file", "Fortran"),
    ("npz negative shape", lambda: _npz_declaring((-2, 8, 8), b""), "invalid_file", "must have shape"),
    ("npz object array", lambda: _npz_declaring((2,), bytes(16), descr="|O"), "", ""),
]


@pytest.mark.parametrize(("label", "build", "code", "reason"), HOSTILE_UPLOADS, ids=[h[0] for h in HOSTILE_UPLOADS])
def test_hostile_archives_are_422_naming_file_and_leave_nothing(
    client, auth, db_session, settings, label, build, code, reason
):
    before = _counts(db_session)
    r = _upload(client, auth, build(), "hostile.zip")
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == (code or body["code"])
    assert body["code"] != "internal_error"
    assert body["errors"][0]["field"] == "file"
    assert reason in body["errors"][0]["reason"]
    assert _counts(db_session) == before
    assert _stored_files(settings) == []


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"max_entry_bytes": 2 << 20}, "entry_too_large"),
        ({"max_inflated_bytes": 5 << 20}, "archive_too_large"),
        ({"max_compression_ratio": 1.0}, "compression_ratio"),
    ],
)
def test_archive_limits_come_from_the_settings(make_settings, db_session, new_key, overrides, code):
    """Entries of 1 and 3 MiB of 4-bit noise (compressing about 2×) pass the defaults and cross each limit
    set lower."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    rng = np.random.default_rng(0)
    noise = {f"{i}.bin": rng.integers(0, 16, 1 << 20, dtype=np.uint8).tobytes() for i in range(3)}
    noise["big.bin"] = noise["0.bin"] * 3
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in noise.items():
            zf.writestr(name, data)
    archive = buf.getvalue()
    with TestClient(create_app(make_settings(), make_session=db_session)) as c:
        assert _upload(c, new_key(), archive).status_code == 202
    with TestClient(create_app(make_settings(**overrides), make_session=db_session)) as c:
        r = _upload(c, new_key(), archive)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"max_dataset_bytes": 100_000}, "dataset_too_large"),  # 2,000 × 8 × 8 = 128,000 bytes stored
        ({"max_archive_entries": 1999}, "too_many_entries"),
        ({"max_inflated_bytes": 100_000}, "archive_too_large"),
    ],
)
def test_npz_limits_are_checked_from_the_header(make_settings, db_session, new_key, overrides, code):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(make_settings(**overrides), make_session=db_session)) as c:
        r = _upload(c, new_key(), _npz(images=np.zeros((2000, 8, 8), np.uint8)), "x.npz")
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code
    assert r.json()["errors"][0]["field"] == "file"


def test_npz_stored_size_counts_the_downscaled_images(make_settings, db_session, new_key):
    """4 images of 1024² are stored at 256² (the default stored_max_side): 262,144 bytes, not 4 MiB."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    settings = make_settings(max_dataset_bytes=4 * 256 * 256)
    with TestClient(create_app(settings, make_session=db_session)) as c:
        r = _upload(c, new_key(), _npz(images=np.zeros((4, 1024, 1024), np.uint8) + 7), "x.npz")
    assert r.status_code == 202, r.text
