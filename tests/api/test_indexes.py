"""The indexes router: search by item, vector or image, and the inputs it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssl_core.knn_index import KnnIndex
from tests.api.factories import random_png


def test_search_by_item_vector_and_image(client, auth, served):
    ds, model, index = served
    url = f"/v1/indexes/{index.id}/search"
    by_item = client.post(url, headers=auth, json={"item": 3, "k": 4}).json()
    assert len(by_item["results"]) == 4
    assert all(r["item"] != 3 for r in by_item["results"])
    scores = [r["score"] for r in by_item["results"]]
    assert scores == sorted(scores, reverse=True)
    first = by_item["results"][0]
    assert first["label"] in ("a", "b")
    assert first["filename"].startswith("img")
    vec = client.post(
        f"/v1/models/{model.id}/embeddings", headers=auth, files=[("files", ("q.png", random_png(5)))]
    ).json()["data"][0]["embedding"]
    by_vec = client.post(url, headers=auth, json={"vector": vec, "k": 3}).json()["results"]
    by_img = client.post(url, headers=auth, files={"image": ("q.png", random_png(5))}, data={"k": "3"}).json()[
        "results"
    ]
    assert [r["item"] for r in by_vec] == [r["item"] for r in by_img]
    assert client.get(f"/v1/indexes/{index.id}", headers=auth).json()["num_items"] == ds.num_images


@pytest.mark.parametrize(
    ("body", "field"),
    [
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
    ],
)
def test_bad_search_inputs_are_refused_naming_the_field(client, auth, served, body, field):
    _, _, index = served
    r = client.post(f"/v1/indexes/{index.id}/search", headers=auth, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field


def _unit(i: int, dim: int = 512, scale: float = 1.0) -> list[float]:
    return [scale if j == i else 0.0 for j in range(dim)]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (json.dumps({"vector": _unit(0, scale=1e39)}), "must be finite numbers (as 32-bit floats)"),
        (json.dumps({"vector": _unit(0)}).replace("1.0", "1e400", 1), "must be finite numbers (as 32-bit floats)"),
        (json.dumps({"vector": _unit(0)}).replace("1.0", "1" + "0" * 400, 1), "must be finite numbers"),
        (json.dumps({"vector": _unit(0, scale=1e-45)}), "norm must be between 1e-15 and 1e+15"),
        (json.dumps({"vector": _unit(0, scale=1e20)}), "norm must be between 1e-15 and 1e+15"),
        (json.dumps({"vector": [1e-30] * 512}), "norm must be between 1e-15 and 1e+15"),
        (json.dumps({"vector": [0.0] * 512}), "norm must be between 1e-15 and 1e+15 (got 0)"),
    ],
)
def test_vectors_float32_cannot_normalise_are_422_naming_vector(client, auth, served, content, reason):
    """Before, such vectors normalised to zero or NaN in float32 and matched arbitrary items with score 0."""
    _, _, index = served
    r = client.post(
        f"/v1/indexes/{index.id}/search", headers={**auth, "Content-Type": "application/json"}, content=content
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "vector"
    assert r.json()["errors"][0]["reason"].startswith(reason)


def test_vectors_at_any_allowed_scale_find_the_same_items(client, auth, served):
    _, _, index = served
    stored = KnnIndex.load(client.app.state.store.index_dir(index.id))
    query = stored.vector(4).astype(np.float64)
    found = []
    for scale in (1e-14, 1.0, 1e14):
        r = client.post(
            f"/v1/indexes/{index.id}/search", headers=auth, json={"vector": (query * scale).tolist(), "k": 5}
        )
        assert r.status_code == 200, r.text
        found.append([(hit["item"], round(hit["score"], 4)) for hit in r.json()["results"]])
    assert found[0] == found[1] == found[2]
    assert found[1][0] == (4, 1.0)  # the item itself, at cosine similarity 1
