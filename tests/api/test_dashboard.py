"""What the dashboard needs from the API: its page and assets, the jobs list's ETag, a dataset item's image, a
model's embedding map, indexes by model, and the queue with its workers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import update

from api.core import workers
from api.core.models import Job
from api.services.dashboard import pca_2d
from ssl_core.data import ImageArray
from tests.api.factories import built_index, ready_dataset, tenant_id, trained_model
from tests.api.key_factory import scoped_key

# The page and its assets -------------------------------------------------------------------------------------


def test_the_page_and_its_assets_are_served_with_a_strict_csp(client):
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert '<script src="/dashboard/static/app.js"' in page.text
    script = client.get("/dashboard/static/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == csp
    assert ".innerHTML" not in script.text  # every API string goes in as text
    assert client.get("/dashboard/static/style.css").status_code == 200
    assert client.get("/dashboard/static/nope.js").status_code == 404
    assert client.get("/dashboard/static/../../main.py").status_code == 404
    assert client.get("/dashboard/", follow_redirects=False).headers["location"] == "/dashboard"


def test_the_page_is_not_in_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith("/dashboard") for p in paths)
    assert {"/v1/ops/queue", "/v1/models/{model_id}/map", "/v1/datasets/{dataset_id}/items/{item}/image"} <= set(paths)


# A dataset item's image --------------------------------------------------------------------------------------


def test_an_item_image_is_a_png_of_its_stored_pixels(client, auth, db_session):
    store = client.app.state.store
    ds = ready_dataset(db_session, store, tenant_id(db_session))
    stored = ImageArray.load(store.dataset_dir(ds.id))
    r = client.get(f"/v1/datasets/{ds.id}/items/5/image", headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert "private" in r.headers["cache-control"]
    image = np.asarray(Image.open(io.BytesIO(r.content)))
    np.testing.assert_array_equal(image, stored.images[5, 0])


def test_a_large_colour_item_is_shrunk_to_a_thumbnail(client, auth, db_session):
    store = client.app.state.store
    ds = ready_dataset(db_session, store, tenant_id(db_session), n=2, size=300)
    data = ImageArray.load(store.dataset_dir(ds.id))
    colour = ImageArray(np.repeat(np.asarray(data.images), 3, axis=1), data.labels, data.filenames, data.classes)
    colour.save(store.dataset_dir(ds.id))
    r = client.get(f"/v1/datasets/{ds.id}/items/1/image", headers=auth)
    assert r.status_code == 200
    image = Image.open(io.BytesIO(r.content))
    assert image.size == (128, 128)
    assert image.mode == "RGB"


@pytest.mark.parametrize(("item", "status", "field"), [(12, 422, "item"), (-1, 422, "item"), ("x", 422, "item")])
def test_an_item_past_the_end_is_refused_naming_item(client, auth, db_session, item, status, field):
    ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session))
    r = client.get(f"/v1/datasets/{ds.id}/items/{item}/image", headers=auth)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == field


def test_item_images_are_the_tenants_own_and_need_a_key(client, auth, new_key, db_session):
    ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session))
    url = f"/v1/datasets/{ds.id}/items/0/image"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=new_key("globex")).status_code == 404
    _, read = scoped_key(db_session, "read")
    assert client.get(url, headers=read).status_code == 200
    assert client.get("/v1/datasets/ds_000000000000000000000000/items/0/image", headers=auth).status_code == 404


def test_an_item_of_a_dataset_not_ready_is_a_409(client, auth, db_session):
    ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session), status="ingesting")
    r = client.get(f"/v1/datasets/{ds.id}/items/0/image", headers=auth)
    assert r.status_code == 409
    assert r.json()["code"] == "dataset_not_ready"


def test_an_item_of_a_dataset_whose_files_are_gone_is_a_409(client, auth, db_session):
    store = client.app.state.store
    ds = ready_dataset(db_session, store, tenant_id(db_session))
    store.remove_dataset(ds.id)  # as a deletion does, between a request's read of the row and of the files
    r = client.get(f"/v1/datasets/{ds.id}/items/0/image", headers=auth)
    assert r.status_code == 409
    assert r.json()["code"] == "dataset_unavailable"


# A model's embedding map -------------------------------------------------------------------------------------


def test_pca_2d_finds_the_directions_of_most_variance():
    x = np.full((200, 5), 7.0)  # uncorrelated columns around a mean of 7: the principal axes are columns 3 and 1
    x[:, 3] += 10 * np.tile([1, -1], 100)
    x[:, 1] += np.tile([1, 1, -1, -1], 50)
    points, explained = pca_2d(x)
    assert points.shape == (200, 2)
    np.testing.assert_allclose(np.abs(points[:, 0]), 10, atol=1e-9)
    np.testing.assert_allclose(points[:, 1] * np.sign(points[0, 1]), np.tile([1, 1, -1, -1], 50), atol=1e-9)
    assert explained == pytest.approx([100 / 101, 1 / 101])
    one, nothing = pca_2d(np.ones((1, 4)))
    assert one.shape == (1, 2)
    assert nothing == [0.0, 0.0]


def test_the_map_projects_the_models_embeddings_with_labels(client, auth, served):
    ds, model, _ = served
    r = client.get(f"/v1/models/{model.id}/map", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == model.id
    assert body["dataset_id"] == ds.id
    assert body["method"] == "pca"
    assert [p["item"] for p in body["points"]] == list(range(12))
    assert [p["label"] for p in body["points"]] == ["a", "b"] * 6
    assert all(np.isfinite([p["x"], p["y"]]).all() for p in body["points"])
    assert 0 < sum(body["explained_variance"]) <= 1.0 + 1e-6
    few = client.get(f"/v1/models/{model.id}/map", headers=auth, params={"limit": 4, "dataset_id": ds.id}).json()
    assert [p["item"] for p in few["points"]] == [0, 4, 7, 11]  # evenly spaced, first and last included


def test_the_map_embeds_in_chunks_with_the_same_answer(client, auth, served, monkeypatch):
    from api.services import dashboard

    _, model, _ = served
    whole = client.get(f"/v1/models/{model.id}/map", headers=auth).json()
    monkeypatch.setattr(dashboard, "MAP_CHUNK", 5)
    chunked = client.get(f"/v1/models/{model.id}/map", headers=auth).json()
    assert [(p["item"], p["label"]) for p in chunked["points"]] == [(p["item"], p["label"]) for p in whole["points"]]
    xy = np.abs([[p["x"], p["y"]] for p in whole["points"]])  # an axis's sign is arbitrary
    np.testing.assert_allclose(np.abs([[p["x"], p["y"]] for p in chunked["points"]]), xy, atol=1e-4)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 2001}, "limit"),
        ({"dataset_id": "ds_000000000000000000000000"}, "dataset_id"),
    ],
)
def test_bad_map_requests_are_refused_naming_the_field(client, auth, served, params, field):
    _, model, _ = served
    r = client.get(f"/v1/models/{model.id}/map", headers=auth, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field


def test_the_map_refuses_a_dataset_of_other_channels_and_foreign_models(client, auth, new_key, served, db_session):
    _, model, _ = served
    with db_session() as s:
        s.get(type(model), model.id).channels = 3
        s.commit()
    r = client.get(f"/v1/models/{model.id}/map", headers=auth)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "dataset_id"
    assert client.get(f"/v1/models/{model.id}/map", headers=new_key("globex")).status_code == 404
    assert client.get(f"/v1/models/{model.id}/map").status_code == 401


def test_the_map_of_a_dataset_whose_files_are_gone_is_a_409(client, auth, served):
    ds, model, _ = served
    client.app.state.store.remove_dataset(ds.id)
    r = client.get(f"/v1/models/{model.id}/map", headers=auth)
    assert r.status_code == 409
    assert r.json()["errors"][0]["field"] == "dataset_id"


# Indexes by model --------------------------------------------------------------------------------------------


def test_indexes_can_be_listed_by_model(client, auth, served, db_session):
    ds, model, index = served
    store = client.app.state.store
    other = trained_model(db_session, store, tenant_id(db_session), ds.id)
    other_index = built_index(db_session, store, tenant_id(db_session), other, ds.id)
    assert [i["id"] for i in client.get("/v1/indexes", headers=auth).json()["data"]] == [other_index.id, index.id]
    mine = client.get("/v1/indexes", headers=auth, params={"model_id": model.id}).json()["data"]
    assert [i["id"] for i in mine] == [index.id]
    assert client.get("/v1/indexes", headers=auth, params={"model_id": "md_x"}).json()["data"] == []


# The queue and the workers -----------------------------------------------------------------------------------


def test_the_queue_counts_the_tenants_jobs_and_shows_workers_with_their_leases(
    client, auth, new_key, db_session, settings
):
    ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session))
    mine = [client.post("/v1/jobs", headers=auth, json={"kind": "pretrain", "dataset_id": ds.id}).json() for _ in "ab"]
    with db_session() as s:
        s.execute(update(Job).where(Job.id == mine[0]["id"]).values(status="running"))
        s.commit()
    other = new_key("globex")
    other_ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session, "globex"))
    foreign = client.post("/v1/jobs", headers=other, json={"kind": "pretrain", "dataset_id": other_ds.id}).json()
    with db_session() as s:
        workers.beat(s, worker_id="w-mine", hostname="gpu1", pid=11, queue=settings.queue_name, job_id=mine[0]["id"])
        workers.beat(s, worker_id="w-other", hostname="gpu2", pid=12, queue=settings.queue_name, job_id=foreign["id"])
        workers.beat(s, worker_id="w-idle", hostname="gpu3", pid=13, queue=settings.queue_name, job_id=None)
        workers.beat(s, worker_id="w-elsewhere", hostname="x", pid=14, queue="another-queue", job_id=None)
        s.commit()

    _, read = scoped_key(db_session, "read")
    r = client.get("/v1/ops/queue", headers=read)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["queue"] == settings.queue_name
    assert isinstance(body["queue_depth"], int)
    assert body["jobs"] == {"queued": 1, "running": 1, "cancelling": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    by_id = {w["id"]: w for w in body["workers"]}
    assert set(by_id) == {"w-mine", "w-other", "w-idle"}
    assert by_id["w-mine"]["job_id"] == mine[0]["id"]
    assert (by_id["w-mine"]["job_kind"], by_id["w-mine"]["job_status"]) == ("pretrain", "running")
    assert by_id["w-other"]["busy"] is True
    assert by_id["w-other"]["job_id"] is None
    assert by_id["w-idle"]["busy"] is False
    assert client.get("/v1/ops/queue").status_code == 401


def test_the_queue_says_when_the_broker_does_not_answer(make_settings, db_session, new_key):
    from fastapi.testclient import TestClient

    from api.main import create_app

    app = create_app(make_settings(broker_url="redis://127.0.0.1:1/0"), make_session=db_session)
    with TestClient(app) as c:
        r = c.get("/v1/ops/queue", headers=new_key())
    assert r.status_code == 200
    assert r.json()["queue_depth"] is None
