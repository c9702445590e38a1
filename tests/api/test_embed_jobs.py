"""Embed jobs through the API: specs refused naming the field, and the embeddings download refusing what it cannot
serve (a wrong format, another kind of job, an embed job that has not succeeded, Parquet without pyarrow)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from api.core.embeddings import embeddings_dtype, npy_path
from api.core.ids import new_id
from api.core.models import Job
from tests.api.factories import ready_dataset, tenant_id, trained_model


@pytest.fixture
def rows(client, db_session):
    store = client.app.state.store
    tenant = tenant_id(db_session)
    ds = ready_dataset(db_session, store, tenant)
    return ds, trained_model(db_session, store, tenant, ds.id)


def _submit(client, auth, body):
    return client.post("/v1/jobs", headers=auth, json=body)


def test_an_embed_job_is_queued_with_its_spec(client, auth, rows):
    ds, model = rows
    r = _submit(client, auth, {"kind": "embed", "model_id": model.id, "dataset_id": ds.id})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "embed"
    assert r.json()["spec"] == {"kind": "embed", "model_id": model.id, "dataset_id": ds.id, "batch_size": 256}
    listed = client.get("/v1/jobs?kind=embed", headers=auth).json()["data"]
    assert [j["id"] for j in listed] == [r.json()["id"]]


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"model_id": None}, "model_id", "Field required"),
        ({"dataset_id": None}, "dataset_id", "Field required"),
        ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
        ({"batch_size": 5000}, "batch_size", "less than or equal to 4096"),
        ({"index_type": "flat"}, "index_type", "unknown field"),
        ({"model_id": "mdl_" + "0" * 24}, "model_id", "no model"),
    ],
)
def test_bad_embed_specs_are_refused_naming_the_field(client, auth, rows, patch, field, reason):
    ds, model = rows
    body = {"kind": "embed", "model_id": model.id, "dataset_id": ds.id, **patch}
    r = _submit(client, auth, {k: v for k, v in body.items() if v is not None})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == field
    assert reason in r.json()["errors"][0]["reason"]


def test_an_embed_job_needs_the_tenants_model_and_dataset_of_its_channels(client, auth, rows, new_key, db_session):
    ds, model = rows
    store = client.app.state.store
    colour = ready_dataset(db_session, store, ds.tenant_id, image_shape=[3, 12, 12])
    r = _submit(client, auth, {"kind": "embed", "model_id": model.id, "dataset_id": colour.id})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "dataset_id"
    assert "1-channel" in r.json()["errors"][0]["reason"]
    other = new_key("other")
    r = _submit(client, other, {"kind": "embed", "model_id": model.id, "dataset_id": ds.id})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "dataset_id"  # not theirs either
    theirs = ready_dataset(db_session, store, tenant_id(db_session, "other"))
    r = _submit(client, other, {"kind": "embed", "model_id": model.id, "dataset_id": theirs.id})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "model_id"


def _job(db_session, tenant: str, dataset_id: str, *, kind: str = "embed", status: str = "succeeded") -> Job:
    job = Job(
        id=new_id("job"),
        tenant_id=tenant,
        kind=kind,
        spec={"kind": kind},
        dataset_id=dataset_id,
        status=status,
        phase=status,
        max_attempts=3,
    )
    with db_session() as s:
        s.add(job)
        s.commit()
    return job


@pytest.mark.parametrize(
    ("kind", "status", "query", "code", "field", "reason"),
    [
        ("embed", "succeeded", "?format=csv", 422, "format", "valid: npy, parquet"),
        ("index", "succeeded", "", 422, "job_id", "is a index job, not an embed job"),
        ("embed", "running", "", 409, "job_id", "is running, not succeeded"),
        ("embed", "failed", "?format=parquet", 409, "job_id", "is failed, not succeeded"),
    ],
)
def test_embeddings_downloads_refuse_what_they_cannot_serve(
    client, auth, rows, db_session, kind, status, query, code, field, reason
):
    ds, _ = rows
    job = _job(db_session, ds.tenant_id, ds.id, kind=kind, status=status)
    r = client.get(f"/v1/jobs/{job.id}/embeddings{query}", headers=auth)
    assert r.status_code == code, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == field
    assert reason in r.json()["errors"][0]["reason"]


def test_embeddings_of_unknown_and_foreign_jobs_are_404(client, auth, rows, db_session, new_key):
    ds, _ = rows
    job = _job(db_session, ds.tenant_id, ds.id)
    assert client.get(f"/v1/jobs/{job.id}/embeddings", headers=new_key("other")).status_code == 404
    assert client.get(f"/v1/jobs/job_{'0' * 24}/embeddings", headers=auth).status_code == 404


def test_parquet_without_pyarrow_is_a_422_naming_format_and_the_extra(client, auth, rows, db_session, monkeypatch):
    ds, _ = rows
    job = _job(db_session, ds.tenant_id, ds.id)
    path = npy_path(client.app.state.store, job.id)
    array = np.zeros(2, embeddings_dtype(4, 1, 8))
    array["item"] = [0, 1]
    np.save(path, array)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    r = client.get(f"/v1/jobs/{job.id}/embeddings?format=parquet", headers=auth)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "format"
    assert "jaga[parquet]" in r.json()["errors"][0]["reason"]
    assert not path.with_suffix(".parquet").exists()
    r = client.get(f"/v1/jobs/{job.id}/embeddings", headers=auth)  # npy needs nothing more
    assert r.status_code == 200
