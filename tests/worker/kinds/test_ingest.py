"""Ingest jobs: archives decoded into datasets, labels from folders or labels.csv, rejected files."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from tests.helpers import make_zip, png_bytes
from tests.worker.helpers import get_job, ingest


def _truncated_png() -> bytes:
    data = png_bytes(np.random.default_rng(3).integers(0, 256, (20, 30), dtype=np.uint8))
    return data[: len(data) // 2]


def test_ingest_decodes_labels_and_rejects_bad_files(client, auth, run, settings):
    rng = np.random.default_rng(0)
    files = {
        f"root/{c}/{i}.png": png_bytes(rng.integers(0, 256, (20, 30), dtype=np.uint8))
        for c in ("cat", "dog")
        for i in range(3)
    }
    files["root/dog/notes.txt"] = b"not an image"
    files["root/dog/broken.png"] = _truncated_png()
    files["root/.DS_Store"] = b"junk"
    ds = ingest(client, auth, run, make_zip(files))
    assert ds["status"] == "ready", ds
    assert ds["num_images"] == 6
    assert ds["image_shape"] == [1, 20, 30]
    assert ds["classes"] == [{"name": "cat", "count": 3}, {"name": "dog", "count": 3}]
    reasons = {r["file"]: r["reason"] for r in ds["rejected"]}
    assert set(reasons) == {"root/dog/notes.txt", "root/dog/broken.png"}
    assert ds["num_rejected"] == 2
    assert "not an image" in reasons["root/dog/notes.txt"]
    job = get_job(client, auth, ds["ingest_job_id"])
    assert job["status"] == "succeeded"
    assert job["result"]["num_images"] == 6


def test_ingest_too_many_pixels_mixed_sizes_and_colour(client, auth, run, settings, make_settings):
    settings.max_image_pixels = 5000
    rng = np.random.default_rng(1)
    files = {
        "a.png": png_bytes(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)),
        "b.png": png_bytes(rng.integers(0, 256, (30, 30), dtype=np.uint8)),
        "huge.png": png_bytes(np.zeros((100, 100), np.uint8)),
    }
    ds = ingest(client, auth, run, make_zip(files))
    assert ds["status"] == "ready"
    assert ds["num_images"] == 2
    assert ds["image_shape"] == [3, 35, 35]
    assert ds["classes"] == []
    assert ds["num_labelled"] == 0  # colour wins; square at median short side  # a flat archive is unlabelled
    assert "too many pixels" in ds["rejected"][0]["reason"]


def test_labels_csv_overrides_folders(client, auth, run):
    img = png_bytes(np.zeros((8, 8), np.uint8))
    ds = ingest(client, auth, run, make_zip({"x/1.png": img, "2.png": img, "labels.csv": b"path,label\n2.png,y\n"}))
    assert ds["classes"] == [{"name": "x", "count": 1}, {"name": "y", "count": 1}]


def test_ingest_npz(client, auth, run):
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((6, 300, 200, 3), np.uint8), labels=np.array([10, 2, 2, 10, -1, 2]))
    ds = client.post("/v1/datasets", headers=auth, files={"file": ("x.npz", buf.getvalue())}, data={"name": "n"}).json()
    run(ds["ingest_job_id"])
    ds = client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()
    assert ds["status"] == "ready"
    assert ds["image_shape"] == [3, 256, 171]
    assert ds["classes"] == [{"name": "2", "count": 3}, {"name": "10", "count": 2}]


def test_all_rejected_fails_dataset_and_job(client, auth, run):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "hello")
    ds = ingest(client, auth, run, buf.getvalue())
    assert ds["status"] == "failed"
    assert ds["error"]["code"] == "no_images"
    job = get_job(client, auth, ds["ingest_job_id"])
    assert job["status"] == "failed"
    assert "a.txt" in job["error"]["message"]
