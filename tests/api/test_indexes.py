"""The indexes router: search by item, vector or image, and the inputs it refuses."""

from __future__ import annotations

import pytest

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
