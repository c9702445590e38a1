from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

from tests.api.factories import built_index, ready_dataset, tenant_id, trained_model
from tests.helpers import png_bytes


@pytest.fixture
def setup(client, db_session):
    store = client.app.state.store
    tenant = tenant_id(db_session)
    ds = ready_dataset(db_session, store, tenant)
    model = trained_model(db_session, store, tenant, ds.id)
    index = built_index(db_session, store, tenant, model, ds.id)
    return ds, model, index


def _png(seed: int = 0, size: int = 20, colour: bool = False) -> bytes:
    shape = (size, size, 3) if colour else (size, size)
    return png_bytes(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def test_model_read_list_download(client, auth, setup):
    _, model, _ = setup
    assert client.get("/v1/models", headers=auth).json()["data"][0]["id"] == model.id
    body = client.get(f"/v1/models/{model.id}", headers=auth).json()
    assert body["embedding_dim"] == 512 and body["method"] == "simclr"
    r = client.get(f"/v1/models/{model.id}/download", headers=auth)
    assert r.status_code == 200
    state = torch.load(io.BytesIO(r.content), weights_only=True)
    assert "state_dict" in state and state["info"]["backbone"] == "resnet18"
    bad = client.get(f"/v1/models/{model.id}/download?format=onnx", headers=auth)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "format"


def test_embeddings_multipart_and_json_agree_and_are_normalised(client, auth, setup):
    _, model, _ = setup
    files = [("files", ("a.png", _png(1))), ("files", ("b.png", _png(2, colour=True)))]
    r = client.post(f"/v1/models/{model.id}/embeddings", headers=auth, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == 512 and body["model_id"] == model.id and len(body["data"]) == 2
    vecs = np.array([d["embedding"] for d in body["data"]])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    j = client.post(f"/v1/models/{model.id}/embeddings", headers=auth,
                    json={"images": [base64.b64encode(_png(1)).decode()]}).json()
    np.testing.assert_allclose(j["data"][0]["embedding"], vecs[0], atol=1e-5)


@pytest.mark.parametrize(("kwargs", "field", "status"), [
    ({"files": [("files", ("a.txt", b"not an image"))]}, "files[0]", 422),
    ({"files": [("other", ("a.png", b"x"))]}, "files", 422),
    ({"json": {"images": []}}, "images", 422),
    ({"json": {"images": ["%%%"]}}, "images[0]", 422),
    ({"json": {"images": [123]}}, "images[0]", 422),
    ({"json": {"images": [base64.b64encode(b"nope").decode()]}}, "images[0]", 422),
    ({"content": b"raw", "headers": {"Content-Type": "text/plain"}}, "Content-Type", 415),
])
def test_embedding_bad_input(client, auth, setup, kwargs, field, status):
    _, model, _ = setup
    headers = {**auth, **kwargs.pop("headers", {})}
    r = client.post(f"/v1/models/{model.id}/embeddings", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["errors"][0]["field"] == field


def test_too_many_images_per_request(client, auth, setup):
    _, model, _ = setup
    n = client.app.state.settings.max_images_per_request + 1
    r = client.post(f"/v1/models/{model.id}/embeddings", headers=auth,
                    json={"images": [base64.b64encode(_png()).decode()] * n})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "images"


def test_search_by_item_vector_and_image(client, auth, setup):
    ds, model, index = setup
    url = f"/v1/indexes/{index.id}/search"
    by_item = client.post(url, headers=auth, json={"item": 3, "k": 4}).json()
    assert len(by_item["results"]) == 4 and all(r["item"] != 3 for r in by_item["results"])
    scores = [r["score"] for r in by_item["results"]]
    assert scores == sorted(scores, reverse=True)
    first = by_item["results"][0]
    assert first["label"] in ("a", "b") and first["filename"].startswith("img")
    vec = client.post(f"/v1/models/{model.id}/embeddings", headers=auth,
                      files=[("files", ("q.png", _png(5)))]).json()["data"][0]["embedding"]
    by_vec = client.post(url, headers=auth, json={"vector": vec, "k": 3}).json()["results"]
    by_img = client.post(url, headers=auth, files={"image": ("q.png", _png(5))}, data={"k": "3"}).json()["results"]
    assert [r["item"] for r in by_vec] == [r["item"] for r in by_img]
    assert client.get(f"/v1/indexes/{index.id}", headers=auth).json()["num_items"] == ds.num_images


@pytest.mark.parametrize(("body", "field"), [
    ({"item": 3, "k": 0}, "k"),
    ({"item": 3, "k": 5000}, "k"),
    ({"item": 3, "k": "many"}, "k"),
    ({"item": 999}, "item"),
    ({"item": -1}, "item"),
    ({"item": "3"}, "item"),
    ({"vector": [1.0, 2.0]}, "vector"),
    ({"vector": [0.0] * 512}, "vector"),
    ({"vector": ["a"] * 512}, "vector"),
    ({"image": "!!"}, "image"),
    ({}, "body"),
    ({"item": 1, "vector": [1.0] * 512}, "body"),
    ({"item": 1, "extra": True}, "extra"),
])
def test_search_bad_input(client, auth, setup, body, field):
    _, _, index = setup
    r = client.post(f"/v1/indexes/{index.id}/search", headers=auth, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field


def test_foreign_and_unknown_models_and_indexes_are_404(client, auth, new_key, setup):
    _, model, index = setup
    other = new_key("globex")
    for method, path in [("GET", f"/v1/models/{model.id}"), ("GET", f"/v1/models/{model.id}/download"),
                         ("POST", f"/v1/models/{model.id}/embeddings"), ("GET", f"/v1/indexes/{index.id}"),
                         ("POST", f"/v1/indexes/{index.id}/search")]:
        assert client.request(method, path, headers=other, json={"item": 1}).status_code == 404, path
    assert client.get("/v1/models/mdl_nope", headers=auth).status_code == 404
    assert client.post("/v1/indexes/idx_nope/search", headers=auth, json={"item": 1}).status_code == 404


def test_a_model_giving_non_finite_embeddings_is_refused_clearly(client, auth, setup, db_session):
    ds, _, _ = setup
    broken = trained_model(db_session, client.app.state.store, tenant_id(db_session), ds.id, nan_weights=True)
    r = client.post(f"/v1/models/{broken.id}/embeddings", headers=auth, files=[("files", ("q.png", _png(1)))])
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "non_finite_embedding"
    assert client.get("/healthz").status_code == 200
