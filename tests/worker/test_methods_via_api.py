"""Every registered method trains through the API: submitted with ``POST /v1/jobs``, run by the worker code
on the real database, saved as a model whose embeddings the API serves."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_core.methods import METHODS
from tests.helpers import class_folder_zip, png_bytes
from tests.worker.test_jobs import _events, _ingest, _job, _submit

#: The smallest configuration each backbone family trains on (colour 16 px images, 4 steps).
TINY_BY_FAMILY = {"resnet": {"backbone": "resnet18", "stem": "standard", "image_size": 32},
                  "vit": {"backbone": "vit_tiny", "image_size": 16, "patch_size": 4}}


@pytest.fixture
def colour_dataset(client, auth, run) -> dict:
    ds = _ingest(client, auth, run, class_folder_zip(n_per_class=16, size=16, colour=True))
    assert ds["status"] == "ready"
    return ds


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_through_the_api(method, client, auth, run, colour_dataset):
    family = METHODS.get(method).families[0]
    body = {"kind": "pretrain", "method": method, "dataset_id": colour_dataset["id"], "epochs": 1,
            "batch_size": 8, **TINY_BY_FAMILY[family]}
    job = _submit(client, auth, body)
    assert run(job["id"]) == "succeeded", _job(client, auth, job["id"])
    job = _job(client, auth, job["id"])
    model = client.get(f"/v1/models/{job['result']['model_id']}", headers=auth).json()
    assert model["method"] == method and model["backbone"] == body["backbone"]
    assert 0 <= job["result"]["metrics"]["knn_accuracy"] <= 1
    # Encoders trained on tiles are evaluated, and serve embeddings, by their tiles; all others whole images.
    # The model says so; so does its kNN report's protocol.
    embedding = model["metrics"]["embedding"]
    assert ("tiles" in embedding) == (method in ("jigsaw", "relative_position")), embedding
    assert job["result"]["metrics"]["knn_protocol"]["embedding"] == embedding
    assert any("embedding_std" in e["data"] for e in _events(client, auth, job["id"]))
    image = png_bytes(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    r = client.post(f"/v1/models/{model['id']}/embeddings", headers=auth, files=[("files", ("q.png", image))])
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == model["embedding_dim"]


def test_a_method_that_cannot_use_the_dataset_is_a_422_naming_it(client, auth, run):
    if "colorization" not in METHODS:
        pytest.skip("colorization is not registered")
    gray = _ingest(client, auth, run, class_folder_zip(n_per_class=4, size=16))
    r = client.post("/v1/jobs", headers=auth, json={"kind": "pretrain", "method": "colorization",
                                                     "dataset_id": gray["id"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "dataset_id"
    assert "grayscale" in r.json()["errors"][0]["reason"]


def test_a_backbone_the_method_does_not_support_is_a_422_naming_it(client, auth, colour_dataset):
    vit_only = [m for m in METHODS.names() if METHODS.get(m).families == ("vit",)]
    if not vit_only:
        pytest.skip("no ViT-only method registered")
    r = client.post("/v1/jobs", headers=auth, json={"kind": "pretrain", "method": vit_only[0],
                                                     "backbone": "resnet18", "dataset_id": colour_dataset["id"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "backbone"
    assert "does not support resnet18" in r.json()["errors"][0]["reason"]
