"""Retries, idempotency keys and errors of the SDK, against httpx transports that answer as a service would."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from jaga.client import AsyncClient, Client, RetryPolicy, retry_after
from jaga.errors import JagaError

JOB = {
    "id": "job_1",
    "kind": "pretrain",
    "status": "queued",
    "phase": "queued",
    "spec": {},
    "progress": 0.0,
    "epoch": 0,
    "step": 0,
    "total_steps": None,
    "loss": None,
    "eta_seconds": None,
    "error": None,
    "result": None,
    "attempt": 0,
    "max_attempts": 3,
    "created_at": "2026-12-06T00:00:00Z",
    "started_at": None,
    "finished_at": None,
    "updated_at": "2026-12-06T00:00:00Z",
}
PROBLEM = {
    "type": "about:blank",
    "title": "Unprocessable Content",
    "status": 422,
    "code": "invalid_request",
    "detail": "the request is invalid",
    "errors": [{"field": "method", "reason": "must be one of simclr, byol"}],
    "request_id": "req-1",
}


def _client(handler, **kwargs) -> Client:  # type: ignore[no-untyped-def]
    return Client("http://jaga.test", "k", transport=httpx.MockTransport(handler), backoff=0.001, **kwargs)


def test_a_submission_is_retried_with_the_same_idempotency_key_after_503_and_a_dropped_connection():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(503, json={**PROBLEM, "status": 503, "code": "unavailable"})
        if len(seen) == 2:
            raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(202, json=JOB)

    job = _client(handler).jobs.pretrain(dataset_id="ds_1", method="simclr", epochs=None)
    assert job.id == "job_1"
    assert len(seen) == 3
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(keys) == 1
    assert len(keys.pop()) == 36
    assert json.loads(seen[0].content) == {"kind": "pretrain", "dataset_id": "ds_1", "method": "simclr"}
    assert seen[0].headers["Authorization"] == "Bearer k"


def test_each_submission_gets_its_own_key():
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        return httpx.Response(202, json=JOB)

    client = _client(handler)
    client.jobs.submit("index", dataset_id="ds_1", model_id="mdl_1")
    client.jobs.submit("index", dataset_id="ds_1", model_id="mdl_1")
    client.jobs.submit("index", dataset_id="ds_1", model_id="mdl_1", idempotency_key="mine")
    assert keys[0] != keys[1]
    assert keys[2] == "mine"


def test_429_waits_as_long_as_retry_after_says(monkeypatch: pytest.MonkeyPatch):
    slept: list[float] = []
    monkeypatch.setattr("jaga.client.time.sleep", slept.append)
    answers = iter([httpx.Response(429, headers={"Retry-After": "7"}, json={**PROBLEM, "status": 429}), None])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers) or httpx.Response(200, json=JOB)

    assert _client(handler).jobs.get("job_1").status == "queued"
    assert slept == [7.0]


def test_retries_end_with_the_last_error():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, json={**PROBLEM, "status": 503, "code": "not_ready", "errors": None})

    with pytest.raises(JagaError) as info:
        _client(handler, retries=2).jobs.get("job_1")
    assert len(calls) == 3
    assert info.value.status == 503
    assert info.value.code == "not_ready"


def test_a_post_without_a_key_is_not_resent_once_it_may_have_arrived(tmp_path):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ReadTimeout("no answer", request=request)

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"x")
    with pytest.raises(JagaError) as info:
        _client(handler).datasets.upload(tmp_path)
    assert len(calls) == 1
    assert info.value.code == "unreachable"


def test_a_refused_connection_is_retried_for_any_request(tmp_path):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(202, json={"id": "ds_1", "status": "ingesting"})

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"png bytes")
    with pytest.raises(Exception, match="validation"):  # the answer above is not a whole dataset: parsing fails
        _client(handler).datasets.upload(tmp_path, wait=False)
    assert len(calls) == 3
    assert b"a/x.png" in calls[-1].read()
    assert b"png bytes" in calls[-1].read()


def test_a_problem_becomes_a_jaga_error_with_its_fields():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json=PROBLEM, headers={"content-type": "application/problem+json"})

    with pytest.raises(JagaError) as info:
        _client(handler).jobs.pretrain(dataset_id="ds_1", method="nope")
    e = info.value
    assert (e.status, e.code, e.request_id) == (422, "invalid_request", "req-1")
    assert e.errors == PROBLEM["errors"]
    assert "method: must be one of" in str(e)


def test_a_non_json_error_still_raises_jaga_error():
    with pytest.raises(JagaError, match="502"):
        _client(lambda r: httpx.Response(502, text="bad gateway")).jobs.get("job_1")


def test_retry_after_as_seconds_or_date_and_backoff_bounds():
    assert retry_after(httpx.Response(429, headers={"Retry-After": "3"})) == 3.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after(httpx.Response(429, headers={"Retry-After": later})) <= 30  # type: ignore[operator]
    assert retry_after(httpx.Response(429, headers={"Retry-After": "soon"})) is None
    policy = RetryPolicy(retries=5, backoff=1.0, max_wait=10.0)
    assert all(min(10.0, 0.5 * 2**a) <= policy.delay(a) <= min(10.0, 1.5 * 2**a) for a in range(6))
    assert policy.delay(0, httpx.Response(429, headers={"Retry-After": "600"})) == 10.0


def test_the_async_client_retries_and_keeps_the_key():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503 if len(seen) == 1 else 202, json=JOB)

    async def go() -> str:
        async with AsyncClient("http://jaga.test", "k", transport=httpx.MockTransport(handler), backoff=0.001) as c:
            return str((await c.jobs.pretrain(dataset_id="ds_1")).id)

    assert asyncio.run(go()) == "job_1"
    assert len(seen) == 2
    assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
