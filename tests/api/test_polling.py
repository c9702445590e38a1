"""Polling that scales: a job's ETag read from its version columns, and the per-process cache of API keys (how
long a revocation elsewhere takes, and that one through this process is at once)."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from api.core.auth import KeyCache
from api.core.models import ApiKey, Job, utcnow
from api.schemas import JobOut
from api.services.jobs import etag_matches, job_etag
from tests.api.factories import ready_dataset, tenant_id
from tests.api.key_factory import scoped_key


@pytest.fixture
def job(client, auth, db_session):
    ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session))
    r = client.post("/v1/jobs", headers=auth, json={"kind": "pretrain", "dataset_id": ds.id})
    assert r.status_code == 202, r.text
    return r.json()


def _write(db_session, job_id: str, **values) -> None:
    """Change the job as the worker does: a Core UPDATE (``updated_at`` set by the column's ``onupdate``)."""
    with db_session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))
        s.commit()


def test_the_304_carries_the_full_answers_etag_until_the_job_changes(client, auth, db_session, job):
    url = f"/v1/jobs/{job['id']}"
    full = client.get(url, headers=auth)
    etag = full.headers["etag"]
    not_modified = client.get(url, headers={**auth, "If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.headers["etag"] == etag
    assert not_modified.content == b""
    # The tag is the job's version written out: its id and version columns, hashed.
    with db_session() as s:
        row = s.get(Job, job["id"])
        version = [row.updated_at, row.status, row.phase, row.step, row.progress, row.attempt]
    assert etag == job_etag(job["id"], version)

    _write(db_session, job["id"], step=3, progress=0.25)
    changed = client.get(url, headers={**auth, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["step"] == 3
    assert changed.headers["etag"] != etag
    assert client.get(url, headers=auth).headers["etag"] == changed.headers["etag"]
    again = client.get(url, headers={**auth, "If-None-Match": changed.headers["etag"]})
    assert again.status_code == 304
    assert again.headers["etag"] == changed.headers["etag"]


def test_a_change_of_any_answered_field_changes_the_etag(client, auth, db_session, job):
    """``result`` is not a version column: its write changes the tag through ``updated_at``."""
    url = f"/v1/jobs/{job['id']}"
    etag = client.get(url, headers=auth).headers["etag"]
    _write(db_session, job["id"], result={"model_id": "mdl_x"})
    r = client.get(url, headers={**auth, "If-None-Match": etag})
    assert r.status_code == 200
    assert r.json()["result"] == {"model_id": "mdl_x"}


def test_the_full_answer_is_the_job_as_its_schema_says(client, auth, db_session, job):
    r = client.get(f"/v1/jobs/{job['id']}", headers=auth)
    assert r.headers["content-type"] == "application/json"
    with db_session() as s:
        expected = JobOut.model_validate(s.get(Job, job["id"])).model_dump(mode="json")
    assert r.json() == expected


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ("*", True),
        ('"abd"', False),
        ("abc", False),
        ("", False),
        (None, False),
    ],
)
def test_if_none_match_lists_weak_tags_and_star(header, matches):
    assert etag_matches(header, '"abc"') is matches


def test_if_none_match_on_a_foreign_or_unknown_job_is_404(client, auth, new_key, job):
    etag = client.get(f"/v1/jobs/{job['id']}", headers=auth).headers["etag"]
    other = new_key("globex")
    assert client.get(f"/v1/jobs/{job['id']}", headers={**other, "If-None-Match": etag}).status_code == 404
    for bad in ("job_nope", "nothing-like-an-id"):
        assert client.get(f"/v1/jobs/{bad}", headers={**auth, "If-None-Match": etag}).status_code == 404


# The key cache ------------------------------------------------------------------------------------------------


def test_a_key_revoked_through_the_api_is_refused_at_once(client, db_session):
    _, admin = scoped_key(db_session, "admin")
    victim, victim_headers = scoped_key(db_session, "write")
    assert client.get("/v1/jobs", headers=victim_headers).status_code == 200  # now in the cache
    assert client.app.state.key_cache.get(victim.key_hash) is not None
    assert client.post(f"/v1/keys/{victim.id}/revoke", headers=admin).status_code == 200
    assert client.app.state.key_cache.get(victim.key_hash) is None
    r = client.get("/v1/jobs", headers=victim_headers)
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized"


def test_a_key_revoked_elsewhere_is_refused_once_the_cache_lets_it_go(client, db_session):
    """The CLI or another API process revokes straight in the database: this process trusts its cached key
    until the TTL passes, then reads the revocation."""
    key, headers = scoped_key(db_session, "write")
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    with db_session() as s:
        s.execute(update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=utcnow()))
        s.commit()
    cache: KeyCache = client.app.state.key_cache
    assert client.get("/v1/jobs", headers=headers).status_code == 200  # within the TTL
    cache.clock = lambda: float("inf")  # the TTL has passed
    assert client.get("/v1/jobs", headers=headers).status_code == 401


def test_without_the_cache_a_revocation_elsewhere_is_at_once(make_settings, db_session):
    from fastapi.testclient import TestClient

    from api.main import create_app

    app = create_app(make_settings(auth_cache_seconds=0), make_session=db_session)
    key, headers = scoped_key(db_session, "write")
    with TestClient(app) as client:
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        with db_session() as s:
            s.execute(update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=utcnow()))
            s.commit()
        assert client.get("/v1/jobs", headers=headers).status_code == 401


def test_the_key_cache_expires_bounds_and_forgets():
    now = [0.0]
    cache = KeyCache(ttl=5, capacity=2, clock=lambda: now[0])
    keys = [ApiKey(id=f"key_{i}", key_hash=f"h{i}", tenant_id="t", scope="read") for i in range(3)]
    for key in keys:
        cache.put(key)
    assert cache.get("h0") is None  # the oldest went past the capacity
    assert cache.get("h1") is keys[1]
    cache.forget("key_1")
    assert cache.get("h1") is None
    now[0] = 4.9
    assert cache.get("h2") is keys[2]
    now[0] = 5.0
    assert cache.get("h2") is None
    off = KeyCache(ttl=0)
    off.put(keys[0])
    assert off.get("h0") is None


def test_unknown_secrets_are_not_cached(client):
    for _ in range(3):
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer jaga_not-a-key"}).status_code == 401
    assert len(client.app.state.key_cache._items) == 0


def test_request_ids_are_unique_32_hex_digits_also_across_processes():
    import re
    import subprocess
    import sys

    from api.logs import new_request_id

    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    other = subprocess.run(
        [sys.executable, "-c", "from api.logs import new_request_id; print(new_request_id())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert other[:16] != ids[0][:16]  # another process, another prefix (a 1 in 2**64 chance of a clash)


# The fast path ---------------------------------------------------------------------------------------------------


def _without_fast_path(settings, db_session):
    """The same app with ``PollFastPath`` left out, so FastAPI's documented route answers."""
    from api.fastpath import PollFastPath
    from api.main import create_app

    app = create_app(settings, make_session=db_session)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not PollFastPath]
    return app


def test_the_fast_path_answers_as_the_documented_route_does(client, settings, auth, db_session, job, monkeypatch):
    from fastapi.testclient import TestClient

    import api.routers.jobs

    url = f"/v1/jobs/{job['id']}"
    route_calls = []
    real_poll = api.routers.jobs.poll
    monkeypatch.setattr(api.routers.jobs, "poll", lambda *a, **k: route_calls.append(1) or real_poll(*a, **k))
    fast = client.get(url, headers=auth)
    fast_304 = client.get(url, headers={**auth, "If-None-Match": fast.headers["etag"]})
    assert route_calls == []  # FastAPI's route never ran
    with TestClient(_without_fast_path(settings, db_session)) as plain_client:
        plain = plain_client.get(url, headers=auth)
        plain_304 = plain_client.get(url, headers={**auth, "If-None-Match": fast.headers["etag"]})
    assert len(route_calls) == 2
    assert (fast.status_code, fast.content, fast_304.status_code) == (plain.status_code, plain.content, 304)
    for name in ("etag", "content-type", "content-length"):
        assert fast.headers[name] == plain.headers[name]
    assert fast_304.headers["etag"] == plain_304.headers["etag"]
    assert "content-type" not in fast_304.headers


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Basic abc"}, 401, "unauthorized"),
        ({"Authorization": "Bearer not-a-key"}, 401, "unauthorized"),
    ],
)
def test_the_fast_path_refuses_as_every_route_does(client, job, headers, status, code):
    r = client.get(f"/v1/jobs/{job['id']}", headers={"X-Request-ID": "poll-1", **headers})
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == 'Bearer realm="jaga"'
    assert r.headers["x-request-id"] == "poll-1"
    body = r.json()
    assert (body["code"], body["instance"], body["request_id"]) == (code, f"/v1/jobs/{job['id']}", "poll-1")


def test_the_fast_path_counts_against_the_rate_limit_and_in_metrics(client, db_session, job):
    from api.core.ratelimit import RateLimiter

    client.app.state.rate_limiter = RateLimiter(clock=lambda: 0.0)
    _, headers = scoped_key(db_session, "read", rate_limit_per_minute=2)  # a read key may poll
    url = f"/v1/jobs/{job['id']}"
    assert [client.get(url, headers=headers).status_code for _ in range(3)] == [200, 200, 429]
    limited = client.get(url, headers=headers)
    assert limited.json()["code"] == "rate_limited"
    assert limited.headers["retry-after"] == "30"
    text = client.get("/metrics").text
    assert 'jaga_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 2.0' in text
    assert 'jaga_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="429"} 2.0' in text


def test_only_a_get_of_one_job_takes_the_fast_path(client, auth, job):
    assert client.get(f"/v1/jobs/{job['id']}/events", headers=auth).status_code == 200
    assert client.post(f"/v1/jobs/{job['id']}", headers=auth).status_code == 405
    assert client.get("/v1/jobs/", headers=auth).status_code in (200, 307)


def test_sqlite_is_read_on_the_event_loop_and_postgres_on_a_thread(make_settings, tmp_path):
    from api.main import create_app

    assert create_app(make_settings(database_url=f"sqlite:///{tmp_path / 'j.db'}")).state.reads_inline is True
    assert create_app(make_settings()).state.reads_inline is False  # the test database is PostgreSQL


def test_the_jobs_list_answers_304_until_a_job_on_it_changes(client, auth, db_session):
    ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session))
    first = client.post("/v1/jobs", headers=auth, json={"kind": "pretrain", "dataset_id": ds.id}).json()
    page = client.get("/v1/jobs", headers=auth)
    assert page.status_code == 200
    etag = page.headers["etag"]
    assert [j["id"] for j in page.json()["data"]] == [first["id"]]

    same = client.get("/v1/jobs", headers={**auth, "If-None-Match": etag})
    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["etag"] == etag
    assert client.get("/v1/jobs", headers={**auth, "If-None-Match": f'W/{etag}, "other"'}).status_code == 304

    with db_session() as s:  # the worker moves the job on
        s.execute(update(Job).where(Job.id == first["id"]).values(step=4, progress=0.5))
        s.commit()
    moved = client.get("/v1/jobs", headers={**auth, "If-None-Match": etag})
    assert moved.status_code == 200
    assert moved.json()["data"][0]["step"] == 4
    assert moved.headers["etag"] != etag

    second = client.post("/v1/jobs", headers=auth, json={"kind": "pretrain", "dataset_id": ds.id}).json()
    grown = client.get("/v1/jobs", headers={**auth, "If-None-Match": moved.headers["etag"]})
    assert grown.status_code == 200
    assert [j["id"] for j in grown.json()["data"]] == [second["id"], first["id"]]
    # A filtered page has its own tag, and the one job's fast path still answers with its own.
    running = client.get("/v1/jobs", headers={**auth, "If-None-Match": grown.headers["etag"]}, params={"kind": "index"})
    assert running.status_code == 200
    assert running.json()["data"] == []
    one = client.get(f"/v1/jobs/{first['id']}", headers=auth)
    assert (
        client.get(f"/v1/jobs/{first['id']}", headers={**auth, "If-None-Match": one.headers["etag"]}).status_code == 304
    )


def test_the_jobs_list_etag_is_per_tenant(client, auth, new_key, db_session):
    ds = ready_dataset(db_session, client.app.state.store, tenant_id(db_session))
    client.post("/v1/jobs", headers=auth, json={"kind": "pretrain", "dataset_id": ds.id})
    etag = client.get("/v1/jobs", headers=auth).headers["etag"]
    other = new_key("globex")
    r = client.get("/v1/jobs", headers={**other, "If-None-Match": etag})
    assert r.status_code == 200
    assert r.json()["data"] == []
