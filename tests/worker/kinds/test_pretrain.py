"""Pretrain jobs: a model with kNN metrics and events, under mixed precision; methods and backbones through the
API, and the ones a dataset or backbone rules out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_core.methods import METHODS
from tests.helpers import class_folder_zip, png_bytes
from tests.worker.helpers import TINY, get_job, ingest, job_events, submit


def test_pretrain_creates_model_with_knn_metrics_and_events(client, auth, run, dataset, settings):
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 2, **TINY})
    assert run(job["id"]) == "succeeded"
    job = get_job(client, auth, job["id"])
    assert job["status"] == "succeeded"
    assert job["progress"] == 1.0
    assert job["attempt"] == 1
    metrics = job["result"]["metrics"]
    for key in ("knn_accuracy", "knn_accuracy_random_init", "knn_accuracy_raw_pixels"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["knn_protocol"]["k"] == 20
    assert metrics["knn_protocol"]["temperature"] == 0.1
    # TINY is a ResNet-18 at 16 px: layer4 meets a 1x1 map, so float32 even where the CPU has bf16
    assert metrics["precision"] == "float32"
    assert metrics["device"] == "cpu"
    profile = metrics["step_profile_seconds"]
    assert list(profile) == ["data", "forward", "backward", "optimizer", "monitor"]
    assert profile["monitor"] > 0
    assert profile["forward"] > 0
    model = client.get(f"/v1/models/{job['result']['model_id']}", headers=auth).json()
    assert model["job_id"] == job["id"]
    assert model["dataset_id"] == dataset["id"]
    assert model["embedding_dim"] == 512
    events = job_events(client, auth, job["id"])
    epochs = [e["data"]["epoch"] for e in events if e["type"] == "metrics" and "loss" in e["data"]]
    assert epochs == [1, 2]
    curve = [e["data"] for e in events if e["type"] == "metrics" and "embedding_std" in e["data"]]
    assert [c["epoch"] for c in curve] == [1, 2]  # the online monitor, each epoch on this small dataset
    assert all(0 <= c["online_knn_accuracy"] <= 1 and c["effective_rank"] > 0 for c in curve)
    assert [e["data"]["status"] for e in events if e["type"] == "state"] == ["queued", "running", "succeeded"]
    assert [e["data"]["precision"] for e in events if "precision" in e["data"]] == ["float32"]
    assert not settings.artifacts.joinpath("jobs", job["id"]).exists()  # checkpoint cleaned up


def test_pretrain_on_colour_images_under_mixed_precision(client, auth, run):
    """Colour images exercise saturation, hue and grayscale, which must stay float32 under bf16 autocast: at
    32 px (TINY's 16 px trains in float32, see above) the job runs in bf16 wherever the CPU has it."""
    from ssl_core.precision import bf16_pays

    ds = ingest(client, auth, run, class_folder_zip(n_per_class=8, size=16, colour=True))
    assert ds["image_shape"] == [3, 16, 16]
    spec = {"kind": "pretrain", "dataset_id": ds["id"], "epochs": 1, **TINY, "image_size": 32}
    job = submit(client, auth, spec)
    assert run(job["id"]) == "succeeded", get_job(client, auth, job["id"])
    pays, why = bf16_pays(torch.device("cpu"))
    metrics = get_job(client, auth, job["id"])["result"]["metrics"]
    assert metrics["precision_reason"].startswith(why)
    if pays:  # then the job's own step was timed in both precisions and the faster one kept
        assert "this configuration" in metrics["precision_reason"]
    else:
        assert metrics["precision"] == "float32"


def test_pretrain_spec_forces_float32(client, auth, run):
    ds = ingest(client, auth, run, class_folder_zip(n_per_class=4, size=16))
    spec = {"kind": "pretrain", "dataset_id": ds["id"], "epochs": 1, **TINY, "image_size": 32, "precision": "float32"}
    job = submit(client, auth, spec)
    assert run(job["id"]) == "succeeded", get_job(client, auth, job["id"])
    assert get_job(client, auth, job["id"])["result"]["metrics"]["precision"] == "float32"
    events = job_events(client, auth, job["id"])
    assert [e["data"]["precision_reason"] for e in events if "precision" in e["data"]] == ["float32 requested"]


#: The smallest configuration each backbone family trains on (colour 16 px images, 4 steps).
TINY_BY_FAMILY = {
    "resnet": {"backbone": "resnet18", "stem": "standard", "image_size": 32},
    "vit": {"backbone": "vit_tiny", "image_size": 16, "patch_size": 4},
}


@pytest.fixture
def colour_dataset(client, auth, run) -> dict:
    ds = ingest(client, auth, run, class_folder_zip(n_per_class=16, size=16, colour=True))
    assert ds["status"] == "ready"
    return ds


# Every method trains in tests/ssl_core/methods/test_every_method.py; through the API, the two paths that differ:
# a method evaluated and served on whole images, and one evaluated and served by its tiles.
@pytest.mark.parametrize("method", ["simclr", "jigsaw"])
def test_a_method_trains_through_the_api_and_serves_embeddings_its_way(method, client, auth, run, colour_dataset):
    family = METHODS.get(method).families[0]
    body = {
        "kind": "pretrain",
        "method": method,
        "dataset_id": colour_dataset["id"],
        "epochs": 1,
        "batch_size": 8,
        **TINY_BY_FAMILY[family],
    }
    job = submit(client, auth, body)
    assert run(job["id"]) == "succeeded", get_job(client, auth, job["id"])
    job = get_job(client, auth, job["id"])
    model = client.get(f"/v1/models/{job['result']['model_id']}", headers=auth).json()
    assert model["method"] == method
    assert model["backbone"] == body["backbone"]
    assert 0 <= job["result"]["metrics"]["knn_accuracy"] <= 1
    # Encoders trained on tiles are evaluated, and serve embeddings, by their tiles; all others whole images.
    # The model says so; so does its kNN report's protocol.
    embedding = model["metrics"]["embedding"]
    assert ("tiles" in embedding) == (method in ("jigsaw", "relative_position")), embedding
    assert job["result"]["metrics"]["knn_protocol"]["embedding"] == embedding
    assert any("embedding_std" in e["data"] for e in job_events(client, auth, job["id"]))
    image = png_bytes(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    r = client.post(f"/v1/models/{model['id']}/embeddings", headers=auth, files=[("files", ("q.png", image))])
    assert r.status_code == 200
    assert len(r.json()["data"][0]["embedding"]) == model["embedding_dim"]


def test_a_method_that_cannot_use_the_dataset_is_a_422_naming_it(client, auth, run):
    if "colorization" not in METHODS:
        pytest.skip("colorization is not registered")
    gray = ingest(client, auth, run, class_folder_zip(n_per_class=4, size=16))
    r = client.post(
        "/v1/jobs", headers=auth, json={"kind": "pretrain", "method": "colorization", "dataset_id": gray["id"]}
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "dataset_id"
    assert "grayscale" in r.json()["errors"][0]["reason"]


def test_a_backbone_the_method_does_not_support_is_a_422_naming_it(client, auth, colour_dataset):
    vit_only = [m for m in METHODS.names() if METHODS.get(m).families == ("vit",)]
    if not vit_only:
        pytest.skip("no ViT-only method registered")
    r = client.post(
        "/v1/jobs",
        headers=auth,
        json={"kind": "pretrain", "method": vit_only[0], "backbone": "resnet18", "dataset_id": colour_dataset["id"]},
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "backbone"
    assert "does not support resnet18" in r.json()["errors"][0]["reason"]
