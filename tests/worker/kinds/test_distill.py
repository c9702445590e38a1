"""Distill and continued-pretrain jobs through the API and the worker: each objective makes a student model that
serves embeddings (a classifier for ``logits``), the comparison sits in the result, lineage is recorded, and a
spec the worker could only fail is refused at submission naming its field."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import class_folder_zip, png_bytes
from tests.worker.helpers import TINY, get_job, ingest, job_events, submit

STUDENT = {"backbone": "mobilenet_v3_small", "batch_size": 8, "epochs": 1, "checkpoint_every_steps": 2}


@pytest.fixture
def teacher(client, auth, run, dataset) -> dict:
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY})
    assert run(job["id"]) == "succeeded"
    return client.get(f"/v1/models/{get_job(client, auth, job['id'])['result']['model_id']}", headers=auth).json()


@pytest.fixture
def classifier(client, auth, run, dataset, teacher) -> dict:
    body = {"kind": "evaluate", "protocol": "linear", "model_id": teacher["id"], "dataset_id": dataset["id"]}
    job = submit(client, auth, body)
    assert run(job["id"]) == "succeeded", get_job(client, auth, job["id"])
    return client.get(f"/v1/models/{get_job(client, auth, job['id'])['result']['model_id']}", headers=auth).json()


def _distill(client, auth, run, body: dict) -> dict:
    job = submit(client, auth, {"kind": "distill", **STUDENT, **body})
    assert run(job["id"]) == "succeeded", get_job(client, auth, job["id"])
    return get_job(client, auth, job["id"])


@pytest.mark.parametrize("objective", ["embedding", "similarity"])
def test_distilled_student_is_a_model_compared_with_its_teacher(client, auth, run, dataset, teacher, objective):
    job = _distill(
        client, auth, run, {"teacher_model_id": teacher["id"], "dataset_id": dataset["id"], "objective": objective}
    )
    comparison = job["result"]["metrics"]["comparison"]
    assert set(comparison) == {"teacher", "student", "student_over_teacher"}
    for side in ("teacher", "student"):
        assert 0 <= comparison[side]["knn_accuracy"] <= 1
        assert 0 <= comparison[side]["linear_probe_accuracy"] <= 1
        assert comparison[side]["embedding_images_per_second"] > 0
    assert comparison["teacher"]["parameters"] == 11_176_512  # ResNet-18 without its classifier
    assert comparison["student"]["parameters"] == 927_008  # MobileNetV3-Small's features
    assert comparison["student_over_teacher"]["parameters"] == pytest.approx(927_008 / 11_176_512, abs=1e-4)
    student = client.get(f"/v1/models/{job['result']['model_id']}", headers=auth).json()
    assert (student["backbone"], student["method"], student["type"]) == ("mobilenet_v3_small", "distill", "encoder")
    assert (student["stem"], student["image_size"], student["embedding_dim"]) == ("standard", 16, 576)
    assert student["parent_model_id"] is None
    assert student["lineage"] == [
        {
            "job_id": job["id"],
            "kind": "distill",
            "dataset_id": dataset["id"],
            "method": f"distill:{objective}",
            "preserve": None,
            "teacher_model_id": teacher["id"],
        }
    ]
    image = png_bytes(np.zeros((16, 16), dtype=np.uint8))
    r = client.post(f"/v1/models/{student['id']}/embeddings", headers=auth, files=[("files", ("a.png", image))])
    assert r.status_code == 200, r.text
    assert r.json()["dim"] == 576
    events = job_events(client, auth, job["id"])
    assert [e["data"]["status"] for e in events if e["type"] == "state"] == ["queued", "running", "succeeded"]


def test_logit_distillation_makes_a_classifier_student(client, auth, run, dataset, classifier):
    job = _distill(
        client,
        auth,
        run,
        {"teacher_model_id": classifier["id"], "dataset_id": dataset["id"], "objective": "logits", "temperature": 2.0},
    )
    student = client.get(f"/v1/models/{job['result']['model_id']}", headers=auth).json()
    assert student["type"] == "classifier"
    assert student["classes"] == classifier["classes"]
    image = png_bytes(np.zeros((16, 16), dtype=np.uint8))
    r = client.post(f"/v1/models/{student['id']}/predictions", headers=auth, files=[("files", ("a.png", image))])
    assert r.status_code == 200, r.text
    assert job["spec"]["temperature"] == 2.0
    assert job["spec"]["soft_weight"] == 0.9


def test_continued_pretraining_records_lineage_and_starts_from_the_model(client, auth, run, dataset, teacher):
    second = ingest(client, auth, run, class_folder_zip(n_per_class=8, size=16, seed=5, classes=("bird", "fish")))
    body = {"kind": "pretrain", "dataset_id": second["id"], "init_model_id": teacher["id"], "preserve": "cassle"}
    job = submit(client, auth, {**body, "epochs": 1, "batch_size": 8, "preserve_weight": 0.5})
    assert job["spec"]["backbone"] == "resnet18"  # the model's, as the spec left them out
    assert (job["spec"]["stem"], job["spec"]["image_size"]) == ("standard", 16)
    assert run(job["id"]) == "succeeded", get_job(client, auth, job["id"])
    job = get_job(client, auth, job["id"])
    metrics = job["result"]["metrics"]
    assert 0 <= metrics["knn_accuracy_init_model"] <= 1
    child = client.get(f"/v1/models/{job['result']['model_id']}", headers=auth).json()
    assert child["parent_model_id"] == teacher["id"]
    assert [(s["dataset_id"], s["kind"], s["preserve"]) for s in child["lineage"]] == [
        (dataset["id"], "pretrain", None),
        (second["id"], "pretrain", "cassle"),
    ]
    assert child["lineage"][0] == teacher["lineage"][0]
    events = job_events(client, auth, job["id"])
    losses = [e["data"] for e in events if e["type"] == "metrics" and "loss" in e["data"]]
    assert losses


def test_specs_the_worker_could_only_fail_are_refused_naming_the_field(client, auth, run, dataset, teacher, classifier):
    colour = ingest(client, auth, run, class_folder_zip(n_per_class=4, size=16, colour=True))
    unlabelled = client.post(
        "/v1/datasets",
        headers=auth,
        files={"file": ("x.zip", class_folder_zip(n_per_class=4, size=16, classes=("x",)))},
        data={"name": "u"},
    ).json()
    run(unlabelled["ingest_job_id"])
    cases = [
        ({"kind": "distill", "teacher_model_id": teacher["id"], "dataset_id": colour["id"]}, "dataset_id", "channels"),
        (
            {"kind": "distill", "teacher_model_id": teacher["id"], "dataset_id": dataset["id"], "objective": "logits"},
            "teacher_model_id",
            "needs a classifier teacher",
        ),
        (
            {
                "kind": "distill",
                "teacher_model_id": classifier["id"],
                "dataset_id": unlabelled["id"],
                "objective": "logits",
            },
            "dataset_id",
            "labelled images of the teacher's classes",
        ),
        (
            {"kind": "distill", "teacher_model_id": teacher["id"], "dataset_id": dataset["id"], "image_size": 32},
            "image_size",
            "must be the teacher's (16)",
        ),
        (
            {"kind": "distill", "teacher_model_id": teacher["id"], "dataset_id": dataset["id"], "temperature": 2},
            "temperature",
            "applies to objective logits",
        ),
        (
            {"kind": "distill", "teacher_model_id": teacher["id"], "dataset_id": dataset["id"], "method": "simclr"},
            "method",
            "applies to pretrain jobs",
        ),
        (
            {"kind": "distill", "teacher_model_id": teacher["id"], "dataset_id": dataset["id"], "backbone": "vgg"},
            "backbone",
            "unknown backbone",
        ),
        (
            {"kind": "pretrain", "dataset_id": dataset["id"], "init_model_id": teacher["id"], "backbone": "resnet34"},
            "init_model_id",
            "has backbone resnet18; this spec asks for resnet34",
        ),
        (
            {"kind": "pretrain", "dataset_id": dataset["id"], "init_model_id": teacher["id"], "method": "mae"},
            "init_model_id",
            "mae does not support",
        ),
        (
            {"kind": "pretrain", "dataset_id": colour["id"], "init_model_id": teacher["id"]},
            "dataset_id",
            "channels",
        ),
        ({"kind": "pretrain", "dataset_id": dataset["id"], "preserve": "lwf"}, "preserve", "needs init_model_id"),
        (
            {"kind": "pretrain", "dataset_id": dataset["id"], "init_model_id": teacher["id"], "preserve_weight": 2},
            "preserve_weight",
            "applies to preserve lwf or cassle",
        ),
        (
            {"kind": "pretrain", "dataset_id": dataset["id"], "init_model_id": "mdl_" + "0" * 24},
            "init_model_id",
            "no model",
        ),
        (
            {"kind": "distill", "teacher_model_id": "mdl_" + "0" * 24, "dataset_id": dataset["id"]},
            "teacher_model_id",
            "no model",
        ),
    ]
    for body, field, reason in cases:
        r = client.post("/v1/jobs", headers=auth, json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        errors = r.json()["errors"]
        assert errors[0]["field"] == field, (body, errors)
        assert reason in errors[0]["reason"], (body, errors)
    assert client.get("/v1/jobs?kind=distill", headers=auth).json()["data"] == []


def test_a_vit_continuation_compares_the_patch_size_it_trained_with(client, auth, run, dataset):
    vit = {"backbone": "vit_tiny", "image_size": 16, "batch_size": 8, "method": "mae"}
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **vit})
    assert run(job["id"]) == "succeeded", get_job(client, auth, job["id"])
    model = get_job(client, auth, job["id"])["result"]["model_id"]
    body = {"kind": "pretrain", "dataset_id": dataset["id"], "init_model_id": model, "method": "mae"}
    accepted = submit(client, auth, {**body, "patch_size": 2, "epochs": 1})  # 2: the default at 16 px
    assert (accepted["spec"]["backbone"], accepted["spec"]["image_size"]) == ("vit_tiny", 16)
    for field, value in (("patch_size", 4), ("image_size", 32)):
        r = client.post("/v1/jobs", headers=auth, json={**body, field: value})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "init_model_id"
        assert f"has {field}" in r.json()["errors"][0]["reason"]
