"""The models router: read, list, download, embeddings and the inputs it refuses."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

from tests.api.factories import random_png, tenant_id, trained_model


def test_a_model_can_be_read_listed_and_downloaded(client, auth, served):
    _, model, _ = served
    assert client.get("/v1/models", headers=auth).json()["data"][0]["id"] == model.id
    body = client.get(f"/v1/models/{model.id}", headers=auth).json()
    assert body["embedding_dim"] == 512
    assert body["method"] == "simclr"
    r = client.get(f"/v1/models/{model.id}/download", headers=auth)
    assert r.status_code == 200
    state = torch.load(io.BytesIO(r.content), weights_only=True)
    assert "state_dict" in state
    assert state["info"]["backbone"] == "resnet18"
    bad = client.get(f"/v1/models/{model.id}/download?format=onnx", headers=auth)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "format"


def test_embeddings_multipart_and_json_agree_and_are_normalised(client, auth, served):
    _, model, _ = served
    files = [("files", ("a.png", random_png(1))), ("files", ("b.png", random_png(2, colour=True)))]
    r = client.post(f"/v1/models/{model.id}/embeddings", headers=auth, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == 512
    assert body["model_id"] == model.id
    assert len(body["data"]) == 2
    vecs = np.array([d["embedding"] for d in body["data"]])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    j = client.post(
        f"/v1/models/{model.id}/embeddings", headers=auth, json={"images": [base64.b64encode(random_png(1)).decode()]}
    ).json()
    np.testing.assert_allclose(j["data"][0]["embedding"], vecs[0], atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "field", "status"),
    [
        ({"files": [("files", ("a.txt", b"not an image"))]}, "files[0]", 422),
        ({"files": [("other", ("a.png", b"x"))]}, "files", 422),
        ({"json": {"images": []}}, "images", 422),
        ({"json": {"images": ["%%%"]}}, "images[0]", 422),
        ({"json": {"images": [123]}}, "images[0]", 422),
        ({"json": {"images": [base64.b64encode(b"nope").decode()]}}, "images[0]", 422),
        ({"content": b"raw", "headers": {"Content-Type": "text/plain"}}, "Content-Type", 415),
    ],
)
def test_bad_embedding_inputs_are_refused_naming_the_field(client, auth, served, kwargs, field, status):
    _, model, _ = served
    headers = {**auth, **kwargs.pop("headers", {})}
    r = client.post(f"/v1/models/{model.id}/embeddings", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["errors"][0]["field"] == field


def test_too_many_images_per_request_are_refused(client, auth, served):
    _, model, _ = served
    n = client.app.state.settings.max_images_per_request + 1
    r = client.post(
        f"/v1/models/{model.id}/embeddings",
        headers=auth,
        json={"images": [base64.b64encode(random_png()).decode()] * n},
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "images"


def test_foreign_and_unknown_models_and_indexes_are_404(client, auth, new_key, served):
    _, model, index = served
    other = new_key("globex")
    for method, path in [
        ("GET", f"/v1/models/{model.id}"),
        ("GET", f"/v1/models/{model.id}/download"),
        ("POST", f"/v1/models/{model.id}/embeddings"),
        ("GET", f"/v1/indexes/{index.id}"),
        ("POST", f"/v1/indexes/{index.id}/search"),
    ]:
        assert client.request(method, path, headers=other, json={"item": 1}).status_code == 404, path
    assert client.get("/v1/models/mdl_nope", headers=auth).status_code == 404
    assert client.post("/v1/indexes/idx_nope/search", headers=auth, json={"item": 1}).status_code == 404


def test_a_model_giving_non_finite_embeddings_is_refused_clearly(client, auth, served, db_session):
    ds, _, _ = served
    broken = trained_model(db_session, client.app.state.store, tenant_id(db_session), ds.id, nan_weights=True)
    r = client.post(f"/v1/models/{broken.id}/embeddings", headers=auth, files=[("files", ("q.png", random_png(1)))])
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "non_finite_embedding"
    assert client.get("/healthz").status_code == 200
