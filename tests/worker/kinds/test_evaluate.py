"""Evaluate jobs: every protocol runs through the API and the worker, reports comparable numbers on the same
splits, and linear / fine-tuning / supervised runs save classifier models."""

from __future__ import annotations

import pytest

from tests.worker.helpers import TINY, get_job, job_events, submit


@pytest.fixture
def encoder(client, auth, run, dataset) -> str:
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY})
    assert run(job["id"]) == "succeeded"
    return get_job(client, auth, job["id"])["result"]["model_id"]


def _evaluate(client, auth, run, body: dict) -> dict:
    job = submit(client, auth, {"kind": "evaluate", **body})
    assert run(job["id"]) == "succeeded", get_job(client, auth, job["id"])
    return get_job(client, auth, job["id"])


FINETUNE = {"epochs": 2, "batch_size": 8}


@pytest.mark.parametrize(
    ("protocol", "extra"),
    [
        ("knn", {"k": 5}),
        ("linear", {}),
        ("finetune", {"strategy": "frozen", **FINETUNE}),
        ("finetune", {"strategy": "partial", "trainable_blocks": 2, **FINETUNE}),
        ("finetune", {"strategy": "full", **FINETUNE}),
    ],
)
def test_protocol_reports_accuracy_on_the_test_split(client, auth, run, dataset, encoder, protocol, extra):
    job = _evaluate(
        client, auth, run, {"protocol": protocol, "model_id": encoder, "dataset_id": dataset["id"], **extra}
    )
    result = job["result"]
    splits = result["protocol"]["splits"]
    # 16 images per class: 3 to test (0.2), 13 labelled of which 1 validates.
    assert (splits["train"], splits["val"], splits["test"]) == (24, 2, 6)
    assert 0.0 <= result["top1"] <= 1.0
    assert "top5" not in result  # two classes
    assert set(result["per_class_accuracy"]) == {"cat", "dog"}
    assert sum(map(sum, result["confusion_matrix"])) == 6 == result["num_test_images"]
    assert result["source_model_id"] == encoder
    if protocol == "knn":
        assert result["model_id"] is None
        return
    model = client.get(f"/v1/models/{result['model_id']}", headers=auth).json()
    assert model["type"] == "classifier"
    assert model["classes"] == ["cat", "dog"]
    assert model["source_model_id"] == encoder
    if protocol == "finetune":
        curve = [e["data"] for e in job_events(client, auth, job["id"]) if "val_accuracy" in e["data"]]
        assert [p["epoch"] for p in curve] == [1, 2]


def test_models_evaluated_with_the_same_labels_and_seed_share_a_subset(client, auth, run, dataset, encoder):
    common = {"dataset_id": dataset["id"], "labels_per_class": 4, "seed": 3}
    knn = _evaluate(client, auth, run, {"protocol": "knn", "model_id": encoder, **common})
    supervised = _evaluate(
        client, auth, run, {"protocol": "supervised", "image_size": 16, "epochs": 1, "batch_size": 8, **common}
    )
    other_seed = _evaluate(client, auth, run, {"protocol": "knn", "model_id": encoder, **common, "seed": 4})
    assert knn["result"]["subset_id"] == supervised["result"]["subset_id"]
    assert other_seed["result"]["subset_id"] != knn["result"]["subset_id"]
    # 4 labels per class, one of each class's four validating.
    assert supervised["result"]["protocol"]["splits"]["train"] == 6
    assert supervised["result"]["protocol"]["init"] == "random (seed 3)"
    model = client.get(f"/v1/models/{supervised['result']['model_id']}", headers=auth).json()
    assert model["method"] == "supervised"
    assert model["source_model_id"] is None


def test_a_separate_test_dataset_is_the_test_split(client, auth, run, dataset, encoder):
    from tests.helpers import class_folder_zip
    from tests.worker.helpers import ingest

    test_ds = ingest(client, auth, run, class_folder_zip(n_per_class=5, size=16, seed=9))
    job = _evaluate(
        client,
        auth,
        run,
        {"protocol": "linear", "model_id": encoder, "dataset_id": dataset["id"], "test_dataset_id": test_ds["id"]},
    )
    splits = job["result"]["protocol"]["splits"]
    assert splits["test"] == 10
    assert splits["train"] + splits["val"] == 32
    assert splits["test_source"] == f"dataset {test_ds['id']}"


def test_cancelling_a_fine_tuning_stops_it_and_saves_no_model(client, auth, run, dataset, encoder):
    import threading

    from tests.helpers import wait_for_job

    body = {"kind": "evaluate", "protocol": "finetune", "model_id": encoder, "dataset_id": dataset["id"]}
    job = submit(client, auth, {**body, "epochs": 500, "batch_size": 8})
    result: list[str | None] = []
    t = threading.Thread(target=lambda: result.append(run(job["id"])))
    t.start()
    wait_for_job(client, job["id"], lambda j: j["step"] >= 2, headers=auth)
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()["status"] == "cancelling"
    t.join(timeout=30)
    assert result == ["cancelled"]
    models = client.get("/v1/models", headers=auth).json()["data"]
    assert [m["id"] for m in models] == [encoder]


def test_a_model_deleted_before_the_job_runs_fails_it_clearly(client, auth, run, dataset, encoder, settings):
    from api.core.db import session_scope
    from api.core.models import Model

    job = submit(
        client, auth, {"kind": "evaluate", "protocol": "knn", "model_id": encoder, "dataset_id": dataset["id"]}
    )
    with session_scope(settings.database_url) as s:
        s.delete(s.get(Model, encoder))
    assert run(job["id"]) == "failed"
    assert get_job(client, auth, job["id"])["error"]["code"] == "model_missing"
