"""Per-tenant quotas: concurrent active jobs (429 + Retry-After) and stored upload bytes (413), refused before
anything is written or left behind, race-safe on PostgreSQL, and idempotent replays never count."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.core.artifacts import ArtifactStore
from api.core.db import session_factory
from api.core.models import Dataset, Job, Tenant
from api.core.queue import make_celery
from api.main import create_app
from api.services import datasets as dataset_service
from api.services import jobs as job_service
from api.services.quotas import ACTIVE_JOBS_RETRY_AFTER, QuotaExceeded
from tests.api.factories import ready_dataset, tenant_id
from tests.api.key_factory import scoped_key
from tests.helpers import class_folder_zip

UPLOAD = class_folder_zip()


def _set_quota(factory, tenant: str = "acme", **quotas: int | None) -> str:
    tid = tenant_id(factory, tenant)
    with factory() as s:
        row = s.get(Tenant, tid)
        for name, value in quotas.items():
            setattr(row, name, value)
        s.commit()
    return tid


def _count(factory, model, **where) -> int:
    with factory() as s:
        stmt = select(func.count()).select_from(model)
        for column, value in where.items():
            stmt = stmt.where(getattr(model, column) == value)
        return s.scalar(stmt)


def _files(root: Path, part: str) -> list[Path]:
    return [p for p in (root / part).rglob("*") if p.is_file()] if (root / part).exists() else []


def _submit(client, auth, dataset_id: str, **headers: str):
    body = {"kind": "pretrain", "dataset_id": dataset_id, "epochs": 1}
    return client.post("/v1/jobs", headers={**auth, **headers}, json=body)


def _upload(client, auth, data: bytes = UPLOAD):
    return client.post("/v1/datasets", headers=auth, files={"file": ("d.zip", data)}, data={"name": "d"})


@pytest.fixture
def dataset(client, db_session):
    return ready_dataset(db_session, client.app.state.store, tenant_id(db_session))


# --- active jobs ----------------------------------------------------------------------------------------------


def test_over_the_active_jobs_quota_is_429_with_retry_after_and_no_job(client, auth, db_session, dataset):
    _set_quota(db_session, max_active_jobs=1)
    first = _submit(client, auth, dataset.id)
    assert first.status_code == 202, first.text
    r = _submit(client, auth, dataset.id)
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"] == str(ACTIVE_JOBS_RETRY_AFTER)
    body = r.json()
    assert body["code"] == "quota_exceeded"
    assert (body["quota"], body["limit"], body["usage"], body["requested"]) == ("max_active_jobs", 1, 1, 1)
    assert "max_active_jobs" in body["detail"]
    assert "1" in body["detail"]
    assert _count(db_session, Job) == 1
    assert client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=auth).status_code == 202
    assert _submit(client, auth, dataset.id).status_code == 202  # a cancelled job frees its place


def test_running_and_cancelling_jobs_count_finished_ones_do_not(client, auth, db_session, dataset):
    _set_quota(db_session, max_active_jobs=2)
    ids = [_submit(client, auth, dataset.id).json()["id"] for _ in range(2)]
    for status in ("running", "cancelling"):
        with db_session() as s:
            s.get(Job, ids[0]).status = status
            s.commit()
        assert _submit(client, auth, dataset.id).status_code == 429, status
    for status in ("succeeded", "failed", "cancelled"):
        with db_session() as s:
            s.get(Job, ids[0]).status = status
            s.commit()
        r = _submit(client, auth, dataset.id)
        assert r.status_code == 202, status
        with db_session() as s:
            s.get(Job, r.json()["id"]).status = "succeeded"
            s.commit()


def test_an_idempotent_replay_does_not_count(client, auth, db_session, dataset):
    _set_quota(db_session, max_active_jobs=1)
    first = _submit(client, auth, dataset.id, **{"Idempotency-Key": "once"})
    assert first.status_code == 202
    replay = _submit(client, auth, dataset.id, **{"Idempotency-Key": "once"})
    assert replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"]
    assert _submit(client, auth, dataset.id, **{"Idempotency-Key": "twice"}).status_code == 429


def test_quotas_are_per_tenant(client, auth, new_key, db_session, dataset):
    _set_quota(db_session, max_active_jobs=1)
    assert _submit(client, auth, dataset.id).status_code == 202
    other_tenant = tenant_id(db_session, "globex")
    other = ready_dataset(db_session, client.app.state.store, other_tenant)
    assert _submit(client, new_key("globex"), other.id).status_code == 202


def test_the_default_comes_from_settings_and_a_tenant_overrides_it(make_settings, db_session, new_key):
    app = create_app(make_settings(max_active_jobs_per_tenant=1), make_session=db_session)
    auth = new_key()
    with TestClient(app) as c:
        ds = ready_dataset(db_session, app.state.store, tenant_id(db_session))
        assert _submit(c, auth, ds.id).status_code == 202
        assert _submit(c, auth, ds.id).status_code == 429
        _set_quota(db_session, max_active_jobs=0)  # this tenant: no limit
        assert all(_submit(c, auth, ds.id).status_code == 202 for _ in range(3))
        _set_quota(db_session, max_active_jobs=5)
        assert _submit(c, auth, ds.id).status_code == 202
        assert _submit(c, auth, ds.id).status_code == 429
    app = create_app(make_settings(max_active_jobs_per_tenant=0), make_session=db_session)
    _set_quota(db_session, max_active_jobs=None)
    with TestClient(app) as c:
        assert all(_submit(c, auth, ds.id).status_code == 202 for _ in range(3))


def test_ingest_jobs_count_and_a_refused_upload_leaves_nothing(client, auth, db_session, settings):
    _set_quota(db_session, max_active_jobs=1)
    ds = _upload(client, auth)
    assert ds.status_code == 202, ds.text
    ready = ready_dataset(db_session, client.app.state.store, tenant_id(db_session))
    assert _submit(client, auth, ready.id).status_code == 429  # the ingest job holds the place
    r = _upload(client, auth)
    assert r.status_code == 429
    assert r.json()["quota"] == "max_active_jobs"
    assert _count(db_session, Dataset) == 2
    assert _count(db_session, Job) == 1
    assert _files(settings.artifacts, "staging") == []
    assert len(_files(settings.artifacts, "uploads")) == 1


# --- stored bytes ---------------------------------------------------------------------------------------------


def test_an_upload_over_the_stored_bytes_quota_is_413_and_leaves_nothing(client, auth, db_session, settings):
    _set_quota(db_session, max_stored_bytes=len(UPLOAD) + 100)
    assert _upload(client, auth).status_code == 202
    r = _upload(client, auth)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert "retry-after" not in r.headers  # waiting does not help; deleting datasets does
    body = r.json()
    assert body["code"] == "quota_exceeded"
    assert (body["quota"], body["limit"], body["usage"], body["requested"]) == (
        "max_stored_bytes",
        len(UPLOAD) + 100,
        len(UPLOAD),
        len(UPLOAD),
    )
    assert _count(db_session, Dataset) == 1
    assert _files(settings.artifacts, "staging") == []
    assert len(_files(settings.artifacts, "uploads")) == 1


def test_an_upload_over_the_quota_is_refused_before_it_is_staged(client, auth, db_session, monkeypatch):
    _set_quota(db_session, max_stored_bytes=len(UPLOAD) - 1)

    def staged(*args, **kwargs):
        raise AssertionError("staged an upload that its size already refused")

    monkeypatch.setattr(dataset_service, "stage_upload", staged)
    assert _upload(client, auth).status_code == 413


def test_deleting_a_dataset_frees_its_bytes(client, auth, db_session):
    tid = _set_quota(db_session, max_stored_bytes=len(UPLOAD) * 3 // 2)
    old = ready_dataset(db_session, client.app.state.store, tid, source_bytes=len(UPLOAD))
    assert _upload(client, auth).status_code == 413
    assert client.delete(f"/v1/datasets/{old.id}", headers=auth).status_code == 204
    assert _upload(client, auth).status_code == 202


class Unseekable(io.RawIOBase):
    """A stream that cannot say its size before it is read (as a chunked body streamed through would)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_an_upload_of_unknown_size_is_checked_once_staged(make_settings, db_session, tmp_path):
    settings = make_settings()
    store = ArtifactStore(settings.artifacts)
    tid = _set_quota(db_session, max_stored_bytes=len(UPLOAD) - 1)
    with db_session() as s, pytest.raises(QuotaExceeded) as refused:
        dataset_service.create_dataset(
            s,
            tenant_id=tid,
            name="d",
            filename="d.zip",
            source=io.BufferedReader(Unseekable(UPLOAD)),
            settings=settings,
            store=store,
            celery=make_celery(settings),
        )
    assert (refused.value.status, refused.value.usage, refused.value.requested) == (413, 0, len(UPLOAD))
    assert _files(settings.artifacts, "staging") == []
    assert _files(settings.artifacts, "uploads") == []
    assert _count(db_session, Dataset) == 0


# --- races on PostgreSQL (real commits from separate sessions) -------------------------------------------------


def _race(n: int, attempt) -> list[object]:  # type: ignore[no-untyped-def]
    """Run ``attempt(i)`` in ``n`` threads released at once; each result or exception, in order."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = attempt(i)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


@pytest.fixture
def committing(make_settings, clean_database):
    """Settings, a session factory that commits for real, an artifact store and a Celery app on a private queue."""
    settings = make_settings()
    return settings, session_factory(clean_database), ArtifactStore(settings.artifacts), make_celery(settings)


def test_concurrent_submissions_cannot_both_take_the_last_place(committing):
    settings, factory, store, celery = committing
    tid = _set_quota(factory, max_active_jobs=1)
    ds = ready_dataset(factory, store, tid)

    def submit(i: int) -> bool:
        with factory() as s:
            body = {"kind": "pretrain", "dataset_id": ds.id, "epochs": 1, "seed": i}
            return job_service.submit_job(
                s, tenant_id=tid, body=body, idempotency_key=None, settings=settings, celery=celery
            )[1]

    results = _race(6, submit)
    assert results.count(True) == 1, results
    assert all(isinstance(r, QuotaExceeded) for r in results if r is not True), results
    assert _count(factory, Job, tenant_id=tid) == 1


def test_concurrent_replays_at_the_quota_all_get_the_one_job(committing):
    settings, factory, store, celery = committing
    tid = _set_quota(factory, max_active_jobs=1)
    ds = ready_dataset(factory, store, tid)

    def submit(i: int) -> tuple[str, bool]:
        with factory() as s:
            body = {"kind": "pretrain", "dataset_id": ds.id, "epochs": 1}
            job, created = job_service.submit_job(
                s, tenant_id=tid, body=body, idempotency_key="same", settings=settings, celery=celery
            )
            return job.id, created

    results = _race(6, submit)
    assert all(isinstance(r, tuple) for r in results), results
    assert len({job_id for job_id, _ in results}) == 1  # type: ignore[misc]
    assert sum(created for _, created in results) == 1  # type: ignore[misc]
    assert _count(factory, Job, tenant_id=tid) == 1


def test_concurrent_uploads_cannot_both_take_the_last_bytes(committing):
    settings, factory, store, celery = committing
    tid = _set_quota(factory, max_stored_bytes=len(UPLOAD) * 3 // 2, max_active_jobs=0)

    def upload(i: int) -> str:
        with factory() as s:
            return dataset_service.create_dataset(
                s,
                tenant_id=tid,
                name=f"d{i}",
                filename="d.zip",
                source=io.BytesIO(UPLOAD),
                settings=settings,
                store=store,
                celery=celery,
            ).id

    results = _race(4, upload)
    assert sum(isinstance(r, str) for r in results) == 1, results
    assert all(isinstance(r, QuotaExceeded) and r.status == 413 for r in results if not isinstance(r, str))
    assert _count(factory, Dataset, tenant_id=tid) == 1
    assert _files(settings.artifacts, "staging") == []
    assert len(_files(settings.artifacts, "uploads")) == 1


def test_usage_shows_the_tenants_quotas_its_usage_and_the_keys_rate_limit(client, auth, db_session, new_key):
    r = client.get("/v1/usage", headers=auth)
    assert r.status_code == 200, r.text
    settings = client.app.state.settings
    assert r.json() == {
        "tenant": "acme",
        "quotas": {
            "max_active_jobs": settings.max_active_jobs_per_tenant,
            "max_stored_bytes": settings.max_stored_bytes_per_tenant,
        },
        "usage": {"active_jobs": 0, "stored_bytes": 0},
        "rate_limit_per_minute": settings.rate_limit_per_minute,
    }
    _set_quota(db_session, max_active_jobs=5, max_stored_bytes=0)
    assert _upload(client, auth).status_code == 202
    _, read = scoped_key(db_session, "read", rate_limit_per_minute=7)
    body = client.get("/v1/usage", headers=read).json()
    assert body["quotas"] == {"max_active_jobs": 5, "max_stored_bytes": 0}  # 0: no limit
    assert body["usage"] == {"active_jobs": 1, "stored_bytes": len(UPLOAD)}  # the upload's ingest job, its bytes
    assert body["rate_limit_per_minute"] == 7
    other = client.get("/v1/usage", headers=new_key("other")).json()
    assert (other["tenant"], other["usage"]) == ("other", {"active_jobs": 0, "stored_bytes": 0})
    assert client.get("/v1/usage").status_code == 401
