"""Upload → SimCLR pretraining → index → search, with a real Celery worker process over Redis."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from api.core.example_data import write_archive
from ssl_core import learning_check as protocol
from ssl_core.fashion_mnist import CLASSES
from tests.helpers import class_folder_zip, png_bytes, submit_job, upload_dataset, wait_for_job

pytestmark = pytest.mark.integration

# The default SimCLR recipe at the learning tests' budget (ssl_core.learning_check). Epochs rather than
# minutes, so a slow CI machine trains the same number of steps (426 s for this test on two AVX2 cores in
# float32; see docs/BENCHMARKS.md for the curve).
TEST_RECIPE = {
    "method": "simclr",
    "backbone": "resnet18",
    "stem": "standard",
    "image_size": protocol.IMAGE_SIZE,
    "batch_size": protocol.BATCH_SIZE,
    "epochs": protocol.epochs_for("simclr"),
    "seed": 0,
}
TRAIN_IMAGES = protocol.TRAIN_IMAGES
TINY = {"stem": "standard", "image_size": 16, "batch_size": 8, "checkpoint_every_steps": 2}


def test_pretraining_learns_then_index_and_search(client, auth, start_worker, tmp_path: Path, fashion_mnist_available):
    start_worker()
    archive = tmp_path / "fm.zip"
    write_archive(archive, "train", limit=TRAIN_IMAGES)
    ds = upload_dataset(client, auth, archive.read_bytes())
    assert ds["num_images"] == TRAIN_IMAGES
    assert len(ds["classes"]) == 10

    job = submit_job(client, auth, {"kind": "pretrain", "dataset_id": ds["id"], **TEST_RECIPE})
    running = wait_for_job(
        client, job["id"], lambda j: j["status"] == "running" and j["step"] > 0, headers=auth, timeout=120
    )
    assert 0 < running["progress"] < 1
    assert running["total_steps"]
    assert running["eta_seconds"] is not None
    job = wait_for_job(client, job["id"], headers=auth, timeout=900)
    assert job["status"] == "succeeded", job
    metrics = job["result"]["metrics"]
    # The point of the product: the trained encoder beats the same encoder before training.
    assert metrics["knn_accuracy"] > metrics["knn_accuracy_random_init"], metrics
    events = client.get(f"/v1/jobs/{job['id']}/events?limit=200", headers=auth).json()["data"]
    assert any(e["type"] == "metrics" and "epoch" in e["data"] for e in events)

    ijob = submit_job(client, auth, {"kind": "index", "dataset_id": ds["id"], "model_id": job["result"]["model_id"]})
    ijob = wait_for_job(client, ijob["id"], headers=auth, timeout=300)
    assert ijob["status"] == "succeeded", ijob
    index_id = ijob["result"]["index_id"]
    assert client.get(f"/v1/indexes/{index_id}", headers=auth).json()["num_items"] == TRAIN_IMAGES

    # Query with unseen test images: the nearest neighbours mostly share the query's class.
    queries = tmp_path / "queries.zip"
    write_archive(queries, "test", limit=40)
    hits = 0
    with zipfile.ZipFile(queries) as zf:
        for name in zf.namelist():
            r = client.post(
                f"/v1/indexes/{index_id}/search",
                headers=auth,
                files={"image": (Path(name).name, io.BytesIO(zf.read(name)))},
                data={"k": "5"},
            )
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            assert len(results) == 5
            assert all(res["label"] in CLASSES for res in results)
            hits += results[0]["label"] == name.split("/")[0]
    assert hits / 40 > 0.5


def test_cancel_through_the_api_stops_the_worker(client, auth, start_worker):
    start_worker()
    ds = upload_dataset(client, auth, class_folder_zip(n_per_class=16, size=16))
    job = submit_job(client, auth, {"kind": "pretrain", "dataset_id": ds["id"], "epochs": 1000, **TINY})
    wait_for_job(client, job["id"], lambda j: j["step"] >= 2, headers=auth, timeout=120)
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 202
    job = wait_for_job(client, job["id"], headers=auth, timeout=30)
    assert job["status"] == "cancelled"


def test_evaluations_and_predictions_run_on_a_celery_worker(client, auth, start_worker):
    start_worker()
    ds = upload_dataset(client, auth, class_folder_zip(n_per_class=20, size=16))
    job = submit_job(client, auth, {"kind": "pretrain", "dataset_id": ds["id"], "epochs": 1, **TINY})
    model_id = wait_for_job(client, job["id"], headers=auth, timeout=300)["result"]["model_id"]
    common = {"kind": "evaluate", "dataset_id": ds["id"], "labels_per_class": 8, "seed": 1}
    tiny = {"epochs": 2, "batch_size": 8}
    bodies = [
        {"protocol": "knn", "model_id": model_id},
        {"protocol": "linear", "model_id": model_id},
        {"protocol": "finetune", "model_id": model_id, "strategy": "full", **tiny},
        {"protocol": "finetune", "model_id": model_id, "strategy": "frozen", **tiny},
        {"protocol": "supervised", "image_size": 16, **tiny},
        {"protocol": "finetune", "model_id": model_id, "strategy": "partial", "trainable_blocks": 3, **tiny},
    ]
    jobs = [
        wait_for_job(client, submit_job(client, auth, {**common, **b})["id"], headers=auth, timeout=300) for b in bodies
    ]
    assert [j["status"] for j in jobs] == ["succeeded"] * 6, jobs
    assert len({j["result"]["subset_id"] for j in jobs}) == 1  # every model saw the same labelled images
    assert all(j["result"]["protocol"]["splits"]["train"] == 14 for j in jobs)  # 8 per class, 1 validating
    linear_classifier = jobs[1]["result"]["model_id"]
    image = base64.b64encode(png_bytes(np.full((16, 16), 200, np.uint8))).decode()
    r = client.post(f"/v1/models/{linear_classifier}/predictions", headers=auth, json={"images": [image, image]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][0] == {**body["data"][1], "index": 0}
    r = client.post(f"/v1/models/{linear_classifier}/predictions?classes=bird", headers=auth, json={"images": [image]})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "classes"
    board = client.get(f"/v1/datasets/{ds['id']}/leaderboard", headers=auth).json()["groups"]
    finetune = next(g for g in board if g["protocol"] == "finetune")
    assert len(finetune["entries"]) == 3
    assert finetune["entries"][0]["top1"] >= finetune["entries"][1]["top1"]
    assert [b["job_id"] for b in finetune["baseline"]] == [jobs[4]["id"]]


def test_distillation_and_continued_pretraining_run_on_a_celery_worker(client, auth, start_worker):
    start_worker()
    first = upload_dataset(client, auth, class_folder_zip(n_per_class=12, size=16))
    second = upload_dataset(client, auth, class_folder_zip(n_per_class=12, size=16, seed=3, classes=("bird", "fish")))
    job = submit_job(client, auth, {"kind": "pretrain", "dataset_id": first["id"], "epochs": 1, **TINY})
    teacher = wait_for_job(client, job["id"], headers=auth, timeout=300)["result"]["model_id"]
    student_body = {
        "kind": "distill",
        "teacher_model_id": teacher,
        "dataset_id": second["id"],
        "objective": "similarity",
    }
    continued_body = {"kind": "pretrain", "dataset_id": second["id"], "init_model_id": teacher, "preserve": "lwf"}
    tiny = {"epochs": 1, "batch_size": 8}
    jobs = [submit_job(client, auth, {**body, **tiny}) for body in (student_body, continued_body)]
    student, continued = (wait_for_job(client, j["id"], headers=auth, timeout=300) for j in jobs)
    assert (student["status"], continued["status"]) == ("succeeded", "succeeded"), (student, continued)
    comparison = student["result"]["metrics"]["comparison"]
    assert comparison["student"]["parameters"] < comparison["teacher"]["parameters"]
    model = client.get(f"/v1/models/{student['result']['model_id']}", headers=auth).json()
    assert model["backbone"] == "mobilenet_v3_small"
    assert model["lineage"][0]["teacher_model_id"] == teacher
    image = base64.b64encode(png_bytes(np.full((16, 16), 90, np.uint8))).decode()
    r = client.post(f"/v1/models/{model['id']}/embeddings", headers=auth, json={"images": [image]})
    assert r.status_code == 200, r.text
    assert r.json()["dim"] == 576
    child = client.get(f"/v1/models/{continued['result']['model_id']}", headers=auth).json()
    assert child["parent_model_id"] == teacher
    assert [s["dataset_id"] for s in child["lineage"]] == [first["id"], second["id"]]
