"""Deleting what the service made: models (not while an active job uses one), indexes, and embed jobs' result files;
each goes with its files, and what outlives a deleted model says so."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sqlalchemy import select

from api.core.artifacts import ArtifactStore
from api.core.auth import lock_tenant
from api.core.db import session_factory
from api.core.embeddings import embeddings_dtype, npy_path
from api.core.ids import new_id
from api.core.jobs import create_job
from api.core.models import Job, Model
from api.core.problems import Problem
from api.core.queue import make_celery
from api.services import jobs as job_service
from api.services import models as model_service
from api.serving import ServingCache
from tests.api.factories import random_png, ready_dataset, tenant_id, trained_model


def _job(db_session, tenant: str, dataset_id: str, **fields) -> Job:
    job = Job(id=new_id("job"), tenant_id=tenant, dataset_id=dataset_id, max_attempts=3, **fields)
    with db_session() as s:
        s.add(job)
        s.commit()
    return job


def _problem(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code
    return r.json()


def test_a_deleted_model_is_gone_with_its_files_and_exports(client, auth, served, new_key):
    _, model, _ = served
    store = client.app.state.store
    assert client.get(f"/v1/models/{model.id}/download?format=safetensors", headers=auth).status_code == 200
    assert client.post(f"/v1/models/{model.id}/embeddings", headers=auth, files={"files": random_png()}).is_success
    folder = store.root / "models" / model.id
    assert (folder / "exports").is_dir()
    _problem(client.delete(f"/v1/models/{model.id}", headers=new_key("other")), 404, "not_found")
    r = client.delete(f"/v1/models/{model.id}", headers=auth)
    assert r.status_code == 204
    assert r.content == b""
    assert not folder.exists()
    _problem(client.get(f"/v1/models/{model.id}", headers=auth), 404, "not_found")
    assert model.id not in [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]]
    # The process that served it had it loaded; it is not served from memory after its deletion.
    r = client.post(f"/v1/models/{model.id}/embeddings", headers=auth, files={"files": random_png()})
    _problem(r, 404, "not_found")
    _problem(client.delete(f"/v1/models/{model.id}", headers=auth), 404, "not_found")
    assert not folder.exists()  # the lookups above created nothing


@pytest.mark.parametrize("field", ["model_id", "teacher_model_id", "init_model_id"])
@pytest.mark.parametrize("status", ["queued", "running", "cancelling"])
def test_a_model_an_active_job_uses_is_not_deleted(client, auth, served, db_session, field, status):
    ds, model, _ = served
    job = _job(db_session, ds.tenant_id, ds.id, kind="embed", status=status, spec={field: model.id})
    body = _problem(client.delete(f"/v1/models/{model.id}", headers=auth), 409, "model_in_use")
    assert job.id in body["detail"]
    assert client.get(f"/v1/models/{model.id}", headers=auth).status_code == 200
    assert client.app.state.store.has_model(model.id)
    with db_session() as s:
        s.get(Job, job.id).status = "succeeded"
        s.commit()
    assert client.delete(f"/v1/models/{model.id}", headers=auth).status_code == 204


def test_an_index_outlives_its_model_and_is_searched_by_vector_or_item(client, auth, served):
    _, model, index = served
    assert client.delete(f"/v1/models/{model.id}", headers=auth).status_code == 204
    assert client.get(f"/v1/indexes/{index.id}", headers=auth).json()["model_id"] == model.id
    r = client.post(f"/v1/indexes/{index.id}/search", headers=auth, json={"item": 0, "k": 2})
    assert r.status_code == 200, r.text
    vector = client.post(f"/v1/indexes/{index.id}/search/batch", headers=auth, json={"items": [1], "k": 1})
    assert vector.status_code == 200, vector.text
    r = client.post(f"/v1/indexes/{index.id}/search", headers=auth, files={"image": random_png()}, data={"k": "2"})
    body = _problem(r, 409, "model_deleted")
    assert body["errors"][0]["field"] == "image"
    assert "search by vector or item" in body["detail"]
    r = client.post(f"/v1/indexes/{index.id}/search/batch", headers=auth, files=[("images", random_png())])
    assert _problem(r, 409, "model_deleted")["errors"][0]["field"] == "images"
    assert not (client.app.state.store.root / "models" / model.id).exists()


def test_a_deleted_index_is_gone_with_its_files(client, auth, served, new_key):
    _, model, index = served
    folder = client.app.state.store.root / "indexes" / index.id
    assert client.post(f"/v1/indexes/{index.id}/search", headers=auth, json={"item": 0, "k": 1}).status_code == 200
    _problem(client.delete(f"/v1/indexes/{index.id}", headers=new_key("other")), 404, "not_found")
    assert client.delete(f"/v1/indexes/{index.id}", headers=auth).status_code == 204
    assert not folder.exists()
    _problem(client.get(f"/v1/indexes/{index.id}", headers=auth), 404, "not_found")
    r = client.post(f"/v1/indexes/{index.id}/search", headers=auth, json={"item": 0, "k": 1})
    _problem(r, 404, "not_found")
    _problem(client.delete(f"/v1/indexes/{index.id}", headers=auth), 404, "not_found")
    assert client.get(f"/v1/models/{model.id}", headers=auth).status_code == 200  # its model stays


def test_an_embed_jobs_results_are_deleted_and_the_job_stays(client, auth, served, db_session, new_key):
    ds, model, _ = served
    store = client.app.state.store
    job = _job(db_session, ds.tenant_id, ds.id, kind="embed", status="succeeded", spec={"model_id": model.id})
    array = np.zeros(2, embeddings_dtype(4, 1, 8))
    np.save(npy_path(store, job.id), array)
    assert client.get(f"/v1/jobs/{job.id}/embeddings?format=parquet", headers=auth).status_code == 200
    _problem(client.delete(f"/v1/jobs/{job.id}/embeddings", headers=new_key("other")), 404, "not_found")
    assert client.delete(f"/v1/jobs/{job.id}/embeddings", headers=auth).status_code == 204
    assert not (store.root / "embeddings" / job.id).exists()  # the npy and its Parquet conversion
    body = _problem(client.get(f"/v1/jobs/{job.id}/embeddings", headers=auth), 404, "not_found")
    assert "no longer stored" in body["detail"]
    _problem(client.delete(f"/v1/jobs/{job.id}/embeddings", headers=auth), 404, "not_found")
    assert client.get(f"/v1/jobs/{job.id}", headers=auth).json()["status"] == "succeeded"


@pytest.mark.parametrize(
    ("kind", "status", "code", "reason"),
    [("index", "succeeded", 422, "is a index job, not an embed job"), ("embed", "running", 409, "is running")],
)
def test_only_a_succeeded_embed_jobs_results_can_be_deleted(
    client, auth, served, db_session, kind, status, code, reason
):
    ds, _, _ = served
    job = _job(db_session, ds.tenant_id, ds.id, kind=kind, status=status, spec={})
    r = client.delete(f"/v1/jobs/{job.id}/embeddings", headers=auth)
    assert r.status_code == code, r.text
    assert r.json()["errors"][0]["field"] == "job_id"
    assert reason in r.json()["errors"][0]["reason"]


# --- deletions racing submissions (PostgreSQL, committing sessions) --------------------------------------------


@pytest.fixture
def committing(make_settings, clean_database):
    """Settings, a session factory that commits for real, the tenant's id, a ready dataset and a model of it."""
    settings = make_settings()
    factory = session_factory(clean_database)
    store = ArtifactStore(settings.artifacts)
    tid = tenant_id(factory)
    ds = ready_dataset(factory, store, tid)
    return settings, factory, tid, ds, trained_model(factory, store, tid, ds.id)


def _in_thread(work) -> tuple[threading.Thread, list[object]]:  # type: ignore[no-untyped-def]
    """``work()`` started in a thread; the list gets its result or exception."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(work())
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_submission_that_waited_on_a_models_deletion_is_refused(committing):
    settings, factory, tid, ds, model = committing
    body = {"kind": "embed", "dataset_id": ds.id, "model_id": model.id}

    def submit() -> object:
        with factory() as s:
            return job_service.submit_job(
                s, tenant_id=tid, body=body, idempotency_key=None, settings=settings, celery=make_celery(settings)
            )

    with factory() as deleter:  # delete_model's transaction between its delete and its commit
        lock_tenant(deleter, tid)
        deleter.delete(deleter.get(Model, model.id))
        deleter.flush()
        thread, out = _in_thread(submit)
        thread.join(timeout=1)
        assert thread.is_alive()  # the model still looked there; it waits for the tenant's lock
        deleter.commit()
    thread.join(timeout=30)
    assert isinstance(out[0], Problem), out
    assert out[0].errors == [{"field": "model_id", "reason": f"no model {model.id!r}"}]
    with factory() as s:
        assert s.scalars(select(Job.id).where(Job.kind == "embed")).all() == []


def test_a_models_deletion_that_waited_on_a_submission_sees_its_job(committing):
    settings, factory, tid, ds, model = committing

    def delete() -> object:
        with factory() as s:
            return model_service.delete_model(
                s, tenant_id=tid, model_id=model.id, store=ArtifactStore(settings.artifacts), cache=ServingCache("cpu")
            )

    with factory() as submitter:  # submit_job's transaction between its job and its commit
        lock_tenant(submitter, tid)
        spec = {"kind": "embed", "dataset_id": ds.id, "model_id": model.id}
        job = create_job(submitter, tenant_id=tid, kind="embed", spec=spec, dataset_id=ds.id, max_attempts=3)
        thread, out = _in_thread(delete)
        thread.join(timeout=1)
        assert thread.is_alive()  # no active job in sight yet; it waits for the tenant's lock
        submitter.commit()
    thread.join(timeout=30)
    assert isinstance(out[0], Problem), out
    assert out[0].code == "model_in_use"
    assert job.id in out[0].detail
    with factory() as s:
        assert s.get(Model, model.id) is not None
