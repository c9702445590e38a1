"""The indexes router: search by item, vector or image, and the inputs it refuses."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from api.core.knn_index import KnnIndex
from api.core.models import VectorIndex
from tests.api.factories import built_index, random_png, tenant_id


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


# Batch search, the bounds on k and on a batch, and what an index says about how it was built.


def _items_and_scores(results: list[dict]) -> list[tuple[int, float]]:
    return [(r["item"], r["score"]) for r in results]


def test_batch_search_answers_each_query_as_its_own_search_would(client, auth, served):
    _, _, index = served
    url = f"/v1/indexes/{index.id}/search"
    single = [
        _items_and_scores(client.post(url, headers=auth, json={"item": i, "k": 3}).json()["results"]) for i in (0, 5, 7)
    ]
    r = client.post(f"{url}/batch", headers=auth, json={"items": [0, 5, 7], "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index_id"] == index.id
    assert body["k"] == 3
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert [_items_and_scores(d["results"]) for d in body["data"]] == single
    stored = KnnIndex.load(client.app.state.store.index_dir(index.id))
    vectors = [stored.vector(i).tolist() for i in (4, 2)]
    by_vectors = client.post(f"{url}/batch", headers=auth, json={"vectors": vectors, "k": 2}).json()["data"]
    assert [next(hit["item"] for hit in d["results"]) for d in by_vectors] == [4, 2]  # each vector finds its item
    for d, vector in zip(by_vectors, vectors, strict=True):
        expected = client.post(url, headers=auth, json={"vector": vector, "k": 2}).json()["results"]
        assert _items_and_scores(d["results"]) == _items_and_scores(expected)


def test_batch_search_by_images_as_json_and_multipart(client, auth, served):
    _, _, index = served
    url = f"/v1/indexes/{index.id}/search"
    pngs = [random_png(5), random_png(6)]
    single = [client.post(url, headers=auth, files={"image": ("q.png", p)}, data={"k": "3"}).json() for p in pngs]
    as_json = client.post(
        f"{url}/batch", headers=auth, json={"images": [base64.b64encode(p).decode() for p in pngs], "k": 3}
    )
    as_form = client.post(
        f"{url}/batch", headers=auth, files=[("images", (f"q{i}.png", p)) for i, p in enumerate(pngs)], data={"k": "3"}
    )
    for r in (as_json, as_form):
        assert r.status_code == 200, r.text
        assert [[h["item"] for h in d["results"]] for d in r.json()["data"]] == [
            [h["item"] for h in s["results"]] for s in single
        ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": [1], "k": 1001}, "k"),
        ({"items": [1], "k": 0}, "k"),
        ({"items": [1], "k": 2.0}, "k"),
        ({"items": [0] * 1001}, "items"),
        ({"items": []}, "items"),
        ({"items": [1, 999]}, "items.1"),
        ({"items": [1, -1]}, "items.1"),
        ({"vectors": [[1.0] * 512] * 1001}, "vectors"),
        ({"vectors": [[1.0] * 512, [1.0] * 3]}, "vectors.1"),
        ({"vectors": [[1.0] * 512, [0.0] * 512]}, "vectors.1"),
        ({"vectors": [[1.0] * 512, "x"]}, "vectors.1"),
        ({"images": ["!!"]}, "images.0"),
        ({"images": ["aGk="] * 65}, "images"),
        ({"items": [1], "vectors": [[1.0] * 512]}, "body"),
        ({}, "body"),
        ({"items": [1], "item": 1}, "item"),
    ],
)
def test_bad_batch_search_inputs_are_refused_naming_the_field(client, auth, served, body, field):
    _, _, index = served
    r = client.post(f"/v1/indexes/{index.id}/search/batch", headers=auth, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == field


def test_k_past_the_maximum_is_a_422_naming_k_and_the_bound(client, auth, served):
    _, _, index = served
    r = client.post(f"/v1/indexes/{index.id}/search", headers=auth, json={"item": 1, "k": 1001})
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "k", "reason": "Input should be less than or equal to 1000"}]


def test_too_many_multipart_images_in_a_batch_are_refused(client, auth, served):
    _, _, index = served
    files = [("images", (f"q{i}.png", b"x")) for i in range(65)]
    r = client.post(f"/v1/indexes/{index.id}/search/batch", headers=auth, files=files)
    assert r.status_code == 422
    assert r.json()["errors"][0] == {"field": "images", "reason": "at most 64 images per request"}


def test_a_flat_index_says_it_is_exact(client, auth, served):
    _, _, index = served
    body = client.get(f"/v1/indexes/{index.id}", headers=auth).json()
    assert body["index_type"] == "flat"
    assert body["build"]["type"] == "flat"
    assert body["build"]["recall_at_10"] == 1.0


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_an_approximate_index_reports_its_build_and_searches_by_item_without_the_item(
    client, auth, served, db_session, kind
):
    ds, model, _ = served
    store = client.app.state.store
    index = built_index(db_session, store, tenant_id(db_session), model, ds.id, index_type=kind)
    body = client.get(f"/v1/indexes/{index.id}", headers=auth).json()
    assert body["index_type"] == kind
    build = body["build"]
    assert build["type"] == kind
    assert build["requested"] == kind
    assert build["params"][("nprobe" if kind == "ivf" else "efSearch")] >= 1
    assert 0.0 <= build["recall_at_10"] <= 1.0
    assert build["recall_queries"] == ds.num_images
    assert build["build_seconds"] >= 0
    stored = KnnIndex.load(store.index_dir(index.id))
    for item in (0, 3):
        hits = client.post(f"/v1/indexes/{index.id}/search", headers=auth, json={"item": item, "k": 5}).json()
        assert [h["item"] for h in hits["results"]] == [h.item for h in stored.search(stored.vector(item), 5, item)]
        assert item not in [h["item"] for h in hits["results"]]
        assert len(hits["results"]) == 5


def test_an_index_saved_before_build_info_existed_is_served(client, auth, served, db_session):
    _, _, index = served
    (client.app.state.store.index_dir(index.id) / "index.json").unlink()  # the previous version wrote none
    with db_session() as s:
        s.get(VectorIndex, index.id).build = None
        s.commit()
    assert client.get(f"/v1/indexes/{index.id}", headers=auth).json()["build"] is None
    r = client.post(f"/v1/indexes/{index.id}/search", headers=auth, json={"item": 2, "k": 3})
    assert r.status_code == 200
    assert len(r.json()["results"]) == 3
