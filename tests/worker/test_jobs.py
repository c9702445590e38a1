from __future__ import annotations

import io
import threading
import zipfile
from datetime import timedelta

import numpy as np
import pytest
import torch
from sqlalchemy import update

from api.core import jobs
from api.core.db import session_scope
from api.core.models import Job, utcnow
from tests.helpers import class_folder_zip, make_zip, png_bytes, wait_for_job
from worker.context import JobContext
from worker.kinds import HANDLERS
from worker.runner import record_success, sweep

TINY = {"stem": "standard", "image_size": 16, "batch_size": 8, "checkpoint_every_steps": 2}


def _ingest(client, auth, run, data: bytes) -> dict:
    ds = client.post("/v1/datasets", headers=auth, files={"file": ("x.zip", data)}, data={"name": "d"}).json()
    run(ds["ingest_job_id"])
    return client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()


def _job(client, auth, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}", headers=auth).json()


def _events(client, auth, job_id: str) -> list[dict]:
    return client.get(f"/v1/jobs/{job_id}/events?limit=200", headers=auth).json()["data"]


def _truncated_png() -> bytes:
    data = png_bytes(np.random.default_rng(3).integers(0, 256, (20, 30), dtype=np.uint8))
    return data[: len(data) // 2]


def test_ingest_decodes_labels_and_rejects_bad_files(client, auth, run, settings):
    rng = np.random.default_rng(0)
    files = {f"root/{c}/{i}.png": png_bytes(rng.integers(0, 256, (20, 30), dtype=np.uint8))
             for c in ("cat", "dog") for i in range(3)}
    files["root/dog/notes.txt"] = b"not an image"
    files["root/dog/broken.png"] = _truncated_png()
    files["root/.DS_Store"] = b"junk"
    ds = _ingest(client, auth, run, make_zip(files))
    assert ds["status"] == "ready", ds
    assert ds["num_images"] == 6 and ds["image_shape"] == [1, 20, 30]
    assert ds["classes"] == [{"name": "cat", "count": 3}, {"name": "dog", "count": 3}]
    reasons = {r["file"]: r["reason"] for r in ds["rejected"]}
    assert set(reasons) == {"root/dog/notes.txt", "root/dog/broken.png"} and ds["num_rejected"] == 2
    assert "not an image" in reasons["root/dog/notes.txt"]
    job = _job(client, auth, ds["ingest_job_id"])
    assert job["status"] == "succeeded" and job["result"]["num_images"] == 6


def test_ingest_too_many_pixels_mixed_sizes_and_colour(client, auth, run, settings, make_settings):
    settings.max_image_pixels = 5000
    rng = np.random.default_rng(1)
    files = {"a.png": png_bytes(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)),
             "b.png": png_bytes(rng.integers(0, 256, (30, 30), dtype=np.uint8)),
             "huge.png": png_bytes(np.zeros((100, 100), np.uint8))}
    ds = _ingest(client, auth, run, make_zip(files))
    assert ds["status"] == "ready"
    assert ds["num_images"] == 2 and ds["image_shape"] == [3, 35, 35]  # colour wins; square at median short side
    assert ds["classes"] == [] and ds["num_labelled"] == 0  # a flat archive is unlabelled
    assert "too many pixels" in ds["rejected"][0]["reason"]


def test_labels_csv_overrides_folders(client, auth, run):
    img = png_bytes(np.zeros((8, 8), np.uint8))
    ds = _ingest(client, auth, run, make_zip({"x/1.png": img, "2.png": img, "labels.csv": b"path,label\n2.png,y\n"}))
    assert ds["classes"] == [{"name": "x", "count": 1}, {"name": "y", "count": 1}]


def test_ingest_npz(client, auth, run):
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((6, 300, 200, 3), np.uint8), labels=np.array([10, 2, 2, 10, -1, 2]))
    ds = client.post("/v1/datasets", headers=auth, files={"file": ("x.npz", buf.getvalue())},
                     data={"name": "n"}).json()
    run(ds["ingest_job_id"])
    ds = client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()
    assert ds["status"] == "ready" and ds["image_shape"] == [3, 256, 171]
    assert ds["classes"] == [{"name": "2", "count": 3}, {"name": "10", "count": 2}]


def test_all_rejected_fails_dataset_and_job(client, auth, run):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "hello")
    ds = _ingest(client, auth, run, buf.getvalue())
    assert ds["status"] == "failed" and ds["error"]["code"] == "no_images"
    job = _job(client, auth, ds["ingest_job_id"])
    assert job["status"] == "failed" and "a.txt" in job["error"]["message"]


@pytest.fixture
def dataset(client, auth, run) -> dict:
    ds = _ingest(client, auth, run, class_folder_zip(n_per_class=16, size=16))
    assert ds["status"] == "ready"
    return ds


def _submit(client, auth, body: dict) -> dict:
    r = client.post("/v1/jobs", headers=auth, json=body)
    assert r.status_code == 202, r.text
    return r.json()


def test_pretrain_creates_model_with_knn_metrics_and_events(client, auth, run, dataset, settings):
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 2, **TINY})
    assert run(job["id"]) == "succeeded"
    job = _job(client, auth, job["id"])
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["attempt"] == 1
    metrics = job["result"]["metrics"]
    for key in ("knn_accuracy", "knn_accuracy_random_init", "knn_accuracy_raw_pixels"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["knn_protocol"]["k"] == 20 and metrics["knn_protocol"]["temperature"] == 0.1
    # TINY is a ResNet-18 at 16 px: layer4 meets a 1x1 map, so float32 even where the CPU has bf16
    assert metrics["precision"] == "float32"
    model = client.get(f"/v1/models/{job['result']['model_id']}", headers=auth).json()
    assert model["job_id"] == job["id"] and model["dataset_id"] == dataset["id"] and model["embedding_dim"] == 512
    events = _events(client, auth, job["id"])
    epochs = [e["data"]["epoch"] for e in events if e["type"] == "metrics" and "loss" in e["data"]]
    assert epochs == [1, 2]
    curve = [e["data"] for e in events if e["type"] == "metrics" and "embedding_std" in e["data"]]
    assert [c["epoch"] for c in curve] == [1, 2]  # the online monitor, each epoch on this small dataset
    assert all(0 <= c["online_knn_accuracy"] <= 1 and c["effective_rank"] > 0 for c in curve)
    assert [e["data"]["status"] for e in events if e["type"] == "state"] == ["queued", "running", "succeeded"]
    assert [e["data"]["precision"] for e in events if "precision" in e["data"]] == ["float32"]
    assert not settings.artifacts.joinpath("jobs", job["id"]).exists()  # checkpoint cleaned up


def test_index_job_builds_searchable_index(client, auth, run, dataset):
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY})
    run(job["id"])
    model_id = _job(client, auth, job["id"])["result"]["model_id"]
    ijob = _submit(client, auth, {"kind": "index", "dataset_id": dataset["id"], "model_id": model_id})
    assert run(ijob["id"]) == "succeeded"
    index_id = _job(client, auth, ijob["id"])["result"]["index_id"]
    res = client.post(f"/v1/indexes/{index_id}/search", headers=auth, json={"item": 0, "k": 5}).json()["results"]
    assert len(res) == 5 and all(r["label"] in ("cat", "dog") for r in res)


def test_cancel_running_job_stops_within_a_step(client, auth, run, dataset, settings):
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 500, **TINY})
    result: list[str | None] = []
    t = threading.Thread(target=lambda: result.append(run(job["id"])))
    t.start()
    wait_for_job(client, job["id"], lambda j: j["step"] >= 2, headers=auth)
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()["status"] == "cancelling"
    t.join(timeout=30)
    assert result == ["cancelled"]
    assert _job(client, auth, job["id"])["status"] == "cancelled"
    assert not settings.artifacts.joinpath("jobs", job["id"]).exists()  # no checkpoint left behind


def test_shutdown_checkpoints_requeues_and_resumes(client, auth, run, dataset, sent, settings):
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 3, **TINY})
    shutdown = threading.Event()
    result: list[str | None] = []
    t = threading.Thread(target=lambda: result.append(run(job["id"], shutdown=shutdown)))
    t.start()
    wait_for_job(client, job["id"], lambda j: j["step"] >= 3, headers=auth)
    shutdown.set()
    t.join(timeout=30)
    assert result == ["queued"] and sent[-1] == job["id"]
    assert settings.artifacts.joinpath("jobs", job["id"], "checkpoint.pt").exists()
    assert _job(client, auth, job["id"])["status"] == "queued"
    assert run(job["id"]) == "succeeded"
    done = _job(client, auth, job["id"])
    assert done["attempt"] == 2 and done["step"] == done["total_steps"]
    assert any("resumed from checkpoint" in e["data"].get("message", "") for e in _events(client, auth, job["id"]))


def test_job_leased_elsewhere_or_terminal_is_not_run(client, auth, run, dataset, settings):
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], **TINY})
    with session_scope(settings.database_url) as s:
        assert jobs.lease_job(s, job_id=job["id"], owner="other", lease_seconds=60) is not None
    assert run(job["id"]) is None
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job["id"]).values(status="succeeded"))
    assert run(job["id"]) is None


def test_lost_lease_stops_without_writing(client, auth, run, dataset, settings):
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 500, **TINY})
    result: list[str | None] = []
    t = threading.Thread(target=lambda: result.append(run(job["id"])))
    t.start()
    wait_for_job(client, job["id"], lambda j: j["step"] >= 2, headers=auth)
    with session_scope(settings.database_url) as s:  # another worker took the job over
        s.execute(update(Job).where(Job.id == job["id"]).values(lease_owner="thief"))
    t.join(timeout=30)
    assert result == [None]
    job = _job(client, auth, job["id"])
    assert job["status"] == "running" and job["result"] is None


def test_result_of_a_job_whose_lease_was_lost_after_saving_leaves_no_files(client, auth, dataset, settings):
    """The lease can go between the handler saving its model and the commit: the model file must go with the
    discarded row, and the checkpoint stay for the job's new owner."""
    job = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY})
    with session_scope(settings.database_url) as s:
        leased = jobs.lease_job(s, job_id=job["id"], owner="slow", lease_seconds=60)
    ctx = JobContext(leased, settings, "slow", threading.Event())
    outcome = HANDLERS["pretrain"](ctx)
    model_dir = settings.artifacts / "models" / outcome.result["model_id"]
    assert (model_dir / "model.pt").exists() and outcome.artifacts == [model_dir]
    with session_scope(settings.database_url) as s:  # another worker took the job over meanwhile
        s.execute(update(Job).where(Job.id == job["id"]).values(lease_owner="thief"))
    assert record_success(ctx, outcome) is False
    assert not model_dir.exists()
    assert settings.artifacts.joinpath("jobs", job["id"], "checkpoint.pt").exists()
    assert client.get("/v1/models", headers=auth).json()["data"] == []
    assert _job(client, auth, job["id"])["status"] == "running"


def test_index_result_discarded_with_the_lease_leaves_no_index_files(client, auth, run, dataset, settings):
    pretrain = _submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY})
    assert run(pretrain["id"]) == "succeeded"
    model_id = _job(client, auth, pretrain["id"])["result"]["model_id"]
    job = _submit(client, auth, {"kind": "index", "model_id": model_id, "dataset_id": dataset["id"]})
    with session_scope(settings.database_url) as s:
        leased = jobs.lease_job(s, job_id=job["id"], owner="slow", lease_seconds=60)
    ctx = JobContext(leased, settings, "slow", threading.Event())
    outcome = HANDLERS["index"](ctx)
    index_dir = settings.artifacts / "indexes" / outcome.result["index_id"]
    assert index_dir.exists() and outcome.artifacts == [index_dir]
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job["id"]).values(lease_owner="thief"))
    assert record_success(ctx, outcome) is False
    assert not index_dir.exists()
    assert client.get("/v1/indexes", headers=auth).json()["data"] == []


def test_sweep_requeues_expired_fails_exhausted_and_resends_unsent(client, auth, dataset, settings, sent):
    ids = [_submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "seed": i, **TINY})["id"]
           for i in range(4)]
    past = utcnow() - timedelta(minutes=5)
    with session_scope(settings.database_url) as s:
        for job_id in ids[:3]:
            jobs.lease_job(s, job_id=job_id, owner="dead", lease_seconds=60)
        s.execute(update(Job).where(Job.id.in_(ids[:3])).values(lease_expires_at=past))
        s.execute(update(Job).where(Job.id == ids[1]).values(attempt=3))
        s.execute(update(Job).where(Job.id == ids[2]).values(status="cancelling"))
        s.execute(update(Job).where(Job.id == ids[3]).values(enqueued_at=None, created_at=past))
    sent.clear()
    sweep(settings, lambda j: sent.append(j) or True)
    statuses = [_job(client, auth, j)["status"] for j in ids]
    assert statuses == ["queued", "failed", "cancelled", "queued"]
    assert _job(client, auth, ids[1])["error"]["code"] == "lease_expired"
    assert sorted(sent) == sorted([ids[0], ids[3]])
    sent.clear()
    sweep(settings, lambda j: sent.append(j) or True)
    assert sent == []  # both were marked sent


def test_failed_ingest_by_reaper_fails_dataset(client, auth, settings, sent):
    ds = client.post("/v1/datasets", headers=auth, files={"file": ("x.zip", class_folder_zip())},
                     data={"name": "d"}).json()
    with session_scope(settings.database_url) as s:
        jobs.lease_job(s, job_id=ds["ingest_job_id"], owner="dead", lease_seconds=60)
        s.execute(update(Job).where(Job.id == ds["ingest_job_id"]).values(
            attempt=3, lease_expires_at=utcnow() - timedelta(minutes=1)))
    sweep(settings, lambda j: sent.append(j) or True)
    ds = client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()
    assert ds["status"] == "failed" and ds["error"]["code"] == "lease_expired"


def test_pretrain_on_colour_images_under_mixed_precision(client, auth, run):
    """Colour images exercise saturation, hue and grayscale, which must stay float32 under bf16 autocast: at
    32 px (TINY's 16 px trains in float32, see above) the job runs in bf16 wherever the CPU has it."""
    from ssl_core.device import supports_bf16

    ds = _ingest(client, auth, run, class_folder_zip(n_per_class=8, size=16, colour=True))
    assert ds["image_shape"] == [3, 16, 16]
    spec = {"kind": "pretrain", "dataset_id": ds["id"], "epochs": 1, **TINY, "image_size": 32}
    job = _submit(client, auth, spec)
    assert run(job["id"]) == "succeeded", _job(client, auth, job["id"])
    expected = "bf16" if supports_bf16(torch.device("cpu")) else "float32"
    assert _job(client, auth, job["id"])["result"]["metrics"]["precision"] == expected


def test_index_job_fails_clearly_when_the_model_gives_non_finite_embeddings(client, auth, run, dataset, settings):
    from api.core.artifacts import ArtifactStore
    from api.core.db import session_factory
    from tests.api.factories import tenant_id, trained_model

    factory = session_factory(settings.database_url)
    broken = trained_model(factory, ArtifactStore(settings.artifacts), tenant_id(factory), dataset["id"],
                           size=16, nan_weights=True)
    ijob = _submit(client, auth, {"kind": "index", "dataset_id": dataset["id"], "model_id": broken.id})
    assert run(ijob["id"]) == "failed"
    job = _job(client, auth, ijob["id"])
    assert job["error"]["code"] == "non_finite_embeddings" and "32 images" in job["error"]["message"]
    assert client.get("/v1/indexes", headers=auth).json()["data"] == []
