"""API keys: a missing, wrong or badly sent key is a 401 problem; a valid one is let in as far as its scope
goes (read < write < admin) and its rate limit allows; /metrics is open or behind its own token."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm.attributes import set_committed_value

from api.core.auth import record_use
from api.core.models import ApiKey, Job, utcnow
from api.core.ratelimit import RateLimiter
from api.deps import READ_ONLY_POSTS
from api.main import create_app
from tests.api.factories import ready_dataset, tenant_id
from tests.api.key_factory import scoped_key
from tests.helpers import class_folder_zip


def test_missing_key_is_401_problem(client):
    r = client.get("/v1/datasets")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_wrong_key_and_wrong_scheme_are_401(client):
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer "}).status_code == 401


def test_a_valid_key_is_let_in(client, auth):
    r = client.get("/v1/datasets", headers=auth)
    assert r.status_code == 200
    assert r.json() == {"data": [], "has_more": False, "next_after": None}


#: Routes only an admin key may call: keys, and webhooks (which send the tenant's job data to a URL it names).
ADMIN_ONLY = ("/v1/keys", "/v1/webhooks")


def _routes(app) -> list[tuple[str, str]]:
    """Every (method, path template) of the API under /v1, from its OpenAPI document."""
    return sorted(
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/v1")
        for method in operations
    )


def _concrete(path: str) -> str:
    return re.sub(r"\{\w+\}", "x", path)


def test_every_v1_route_needs_a_key(client):
    routes = _routes(client.app)
    assert len(routes) > 20
    for method, path in routes:
        r = client.request(method, _concrete(path))
        assert r.status_code == 401, (method, path, r.text)


def test_a_read_key_is_refused_every_write_route(client, db_session):
    """Iterates over the app's routes, so a write route added later is covered without editing this test."""
    _, read = scoped_key(db_session, "read")
    writes = [(m, p) for m, p in _routes(client.app) if m not in ("GET", "HEAD") and (p not in READ_ONLY_POSTS)]
    assert ("POST", "/v1/jobs") in writes
    assert ("DELETE", "/v1/datasets/{dataset_id}") in writes
    for method, path in writes:
        r = client.request(method, _concrete(path), headers=read, json={})
        assert r.status_code == 403, (method, path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["code"] == "forbidden"
        needed = "admin" if path.startswith(ADMIN_ONLY) else "write"
        assert f"scope '{needed}'" in body["detail"]
        assert "scope is 'read'" in body["detail"]


def test_a_read_key_reads_and_may_use_the_inference_posts(client, db_session, served):
    ds, _model, index = served
    _, read = scoped_key(db_session, "read")
    for method, path in _routes(client.app):
        if method == "GET" and not path.startswith(ADMIN_ONLY):
            assert client.get(_concrete(path), headers=read).status_code != 403, path
    assert client.get(f"/v1/datasets/{ds.id}", headers=read).status_code == 200
    assert {p for m, p in _routes(client.app) if m == "POST"} >= READ_ONLY_POSTS  # the names are still routes
    r = client.post(f"/v1/indexes/{index.id}/search", headers=read, json={"item": 0, "k": 2})
    assert r.status_code == 200, r.text
    for path in READ_ONLY_POSTS:
        assert client.post(_concrete(path), headers=read, json={}).status_code == 404, path


def test_a_write_key_cannot_manage_keys_or_webhooks(client, auth):
    for method, path in _routes(client.app):
        if path.startswith(ADMIN_ONLY):
            r = client.request(method, _concrete(path), headers=auth, json={"name": "k"})
            assert r.status_code == 403, (method, path)
            assert "scope 'admin'" in r.json()["detail"]


def test_an_admin_key_can_do_everything(client, db_session):
    _, admin = scoped_key(db_session, "admin")
    ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session))
    r = client.post("/v1/jobs", headers=admin, json={"kind": "pretrain", "dataset_id": ds.id, "epochs": 1})
    assert r.status_code == 202, r.text
    assert client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=admin).status_code == 202
    up = client.post("/v1/datasets", headers=admin, files={"file": ("d.zip", class_folder_zip())}, data={"name": "d"})
    assert up.status_code == 202, up.text
    assert client.get("/v1/keys", headers=admin).status_code == 200


def test_a_write_key_submits_but_cannot_touch_keys(client, db_session, auth):
    ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session))
    r = client.post("/v1/jobs", headers=auth, json={"kind": "pretrain", "dataset_id": ds.id, "epochs": 1})
    assert r.status_code == 202, r.text
    with db_session() as s:
        assert s.scalar(select(Job.id).where(Job.id == r.json()["id"])) is not None


# --- last_used_at ---------------------------------------------------------------------------------------------


def test_last_used_at_is_set_by_a_request(client, db_session):
    key, headers = scoped_key(db_session, "read")
    assert key.last_used_at is None
    before = utcnow()
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    with db_session() as s:
        used = s.get(ApiKey, key.id).last_used_at
    assert used is not None
    assert used >= before - timedelta(seconds=1)


def test_last_used_at_is_written_at_most_once_a_minute(db_session):
    key, _ = scoped_key(db_session, "read")
    t0 = utcnow()
    with db_session() as s:
        key = s.get(ApiKey, key.id)
        assert record_use(s, key, now=t0)
        assert not record_use(s, key, now=t0 + timedelta(seconds=59))
        assert record_use(s, key, now=t0 + timedelta(seconds=61))
    with db_session() as s:
        stale = s.get(ApiKey, key.id)
        set_committed_value(stale, "last_used_at", t0)  # another process's older copy: the database's value wins
        assert not record_use(s, stale, now=t0 + timedelta(seconds=90))
        assert s.get(ApiKey, key.id, populate_existing=True).last_used_at == t0 + timedelta(seconds=61)


# --- rate limits ----------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(client) -> Clock:
    clock = Clock()
    client.app.state.rate_limiter = RateLimiter(clock=clock)
    return clock


def test_rate_limit_is_exhausted_then_refills(client, db_session, clock):
    _, headers = scoped_key(db_session, "read", rate_limit_per_minute=3)
    for _ in range(3):  # the burst is the per-minute figure
        assert client.get("/v1/jobs", headers=headers).status_code == 200
    r = client.get("/v1/jobs", headers=headers)
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "rate_limited"
    assert r.headers["retry-after"] == "20"  # one token every 20 s at 3 a minute
    assert r.headers["ratelimit-limit"] == "3"
    assert r.headers["ratelimit-remaining"] == "0"
    assert r.headers["ratelimit-reset"] == "60"
    clock.now += 19
    assert client.get("/v1/jobs", headers=headers).headers["retry-after"] == "1"
    clock.now += 1
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    assert client.get("/v1/jobs", headers=headers).status_code == 429
    clock.now += 600  # a long pause refills to the burst, no further
    assert [client.get("/v1/jobs", headers=headers).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_rate_limits_are_per_key(client, db_session, clock):
    _, first = scoped_key(db_session, "read", rate_limit_per_minute=1)
    _, second = scoped_key(db_session, "read", rate_limit_per_minute=1)
    assert client.get("/v1/jobs", headers=first).status_code == 200
    assert client.get("/v1/jobs", headers=first).status_code == 429
    assert client.get("/v1/jobs", headers=second).status_code == 200


def test_rate_limit_default_comes_from_settings_and_zero_is_off(make_settings, db_session):
    app = create_app(make_settings(rate_limit_per_minute=2), make_session=db_session)
    _, default = scoped_key(db_session, "read")
    _, unlimited = scoped_key(db_session, "read", rate_limit_per_minute=0)
    with TestClient(app) as c:
        assert [c.get("/v1/jobs", headers=default).status_code for _ in range(3)] == [200, 200, 429]
        assert all(c.get("/v1/jobs", headers=unlimited).status_code == 200 for _ in range(10))
        assert all(c.get("/healthz").status_code == 200 for _ in range(10))  # no key, no limit
    app = create_app(make_settings(rate_limit_per_minute=0), make_session=db_session)
    with TestClient(app) as c:
        assert all(c.get("/v1/jobs", headers=default).status_code == 200 for _ in range(10))


def test_rate_limited_writes_do_nothing(client, db_session, clock):
    _, headers = scoped_key(db_session, "write", rate_limit_per_minute=1)
    ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session))
    body = {"kind": "pretrain", "dataset_id": ds.id, "epochs": 1}
    assert client.post("/v1/jobs", headers=headers, json=body).status_code == 202
    assert client.post("/v1/jobs", headers=headers, json=body).status_code == 429
    with db_session() as s:
        assert len(list(s.scalars(select(Job.id)))) == 1


def test_token_bucket_arithmetic():
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    first = limiter.take("k", 120)  # 2 tokens a second
    assert (first.allowed, first.limit, first.remaining) == (True, 120, 119)
    for _ in range(119):
        assert limiter.take("k", 120).allowed
    refused = limiter.take("k", 120)
    assert not refused.allowed
    assert refused.retry_after == 1
    assert refused.reset == 60
    clock.now += 0.5
    assert limiter.take("k", 120).allowed
    assert limiter.take("other", 120).remaining == 119
    assert limiter.take("k", 1).retry_after == 60  # a lowered limit applies at once
    with pytest.raises(ValueError, match="at least 1"):
        limiter.take("k", 0)


# --- /metrics -------------------------------------------------------------------------------------------------


def test_open_metrics_name_no_tenant(client, db_session):
    tenant = tenant_id(db_session, "initech-confidential")
    key, headers = scoped_key(db_session, "write", tenant="initech-confidential")
    ds = ready_dataset(db_session, client.app.state.store, tenant)
    assert client.post("/v1/jobs", headers=headers, json={"kind": "pretrain", "dataset_id": ds.id}).status_code == 202
    r = client.get("/metrics")
    assert r.status_code == 200
    assert 'jaga_jobs{kind="pretrain",status="queued"} 1.0' in r.text
    for secret in ("initech", tenant, key.id, ds.id, "tenant"):
        assert secret not in r.text
    assert not re.search(r"\b[a-z]{2,3}_[0-9a-f]{24}\b", r.text)  # no resource id of any kind


def test_metrics_token_is_required_when_set(make_settings, db_session):
    app = create_app(make_settings(metrics_token="m3trics-t0ken"), make_session=db_session)
    with TestClient(app) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic m3trics-t0ken"}):
            r = c.get("/metrics", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/metrics", headers={"Authorization": "Bearer m3trics-t0ken"}).status_code == 200
        assert c.get("/metrics", headers={"Authorization": "bearer m3trics-t0ken"}).status_code == 200
        assert c.get("/healthz").status_code == 200
