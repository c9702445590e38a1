"""A request its key does not let in is refused before its body is read: an anonymous or over-limit client
cannot make the service take in an upload (``api.gate.AuthorizeFirst``)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.models import Dataset, Job, Tenant
from api.core.ratelimit import RateLimiter
from tests.api.factories import ready_dataset, tenant_id
from tests.api.key_factory import scoped_key
from tests.api.live import live_server
from tests.helpers import class_folder_zip

UPLOAD = {"file": ("big.zip", b"\0" * (4 << 20))}  # never inspected when the key is refused


class BodyCounter:
    """ASGI wrapper counting the body bytes the app under it asked the server for."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.read = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.read += len(message.get("body", b""))
            return message

        await self.app(scope, counting, send)


@pytest.fixture
def counted(app) -> Iterator[tuple[TestClient, BodyCounter]]:  # type: ignore[no-untyped-def]
    app.state.rate_limiter = RateLimiter(clock=lambda: 1000.0)  # no refill while the test runs
    counter = BodyCounter(app)
    with TestClient(counter, raise_server_exceptions=False) as c:
        yield c, counter


def _refused(c: TestClient, counter: BodyCounter, headers: dict[str, str], status: int, code: str) -> None:
    counter.read = 0
    r = c.post("/v1/datasets", headers=headers, files=UPLOAD, data={"name": "big"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code
    assert r.headers["x-request-id"] == r.json()["request_id"]
    assert counter.read == 0, "the body was read before the key was checked"


def test_uploads_without_a_usable_key_are_refused_unread(counted, db_session):
    c, counter = counted
    _refused(c, counter, {}, 401, "unauthorized")
    _refused(c, counter, {"Authorization": "Bearer not-a-key"}, 401, "unauthorized")
    _refused(c, counter, {"Authorization": "Basic abc"}, 401, "unauthorized")
    _refused(c, counter, scoped_key(db_session, "read")[1], 403, "forbidden")
    _, spent = scoped_key(db_session, "write", rate_limit_per_minute=1)
    assert c.get("/v1/datasets", headers=spent).status_code == 200
    _refused(c, counter, spent, 429, "rate_limited")
    with db_session() as s:
        assert s.scalars(select(Dataset.id)).all() == []


def test_json_bodies_are_not_read_for_a_refused_key(counted, db_session):
    c, counter = counted
    ds = ready_dataset(db_session, c.app.app.state.store, tenant_id(db_session))
    for headers, status in (({}, 401), (scoped_key(db_session, "read")[1], 403)):
        r = c.post("/v1/jobs", headers=headers, json={"kind": "pretrain", "dataset_id": ds.id, "pad": "x" * 100_000})
        assert r.status_code == status, r.text
        assert counter.read == 0
    _, write = scoped_key(db_session, "write")
    r = c.post("/v1/keys", headers=write, json={"name": "k", "pad": "x" * 100_000})
    assert (r.status_code, counter.read) == (403, 0)  # an admin route, refused to a write key unread
    with db_session() as s:
        assert s.scalars(select(Job.id).where(Job.kind == "pretrain")).all() == []


def test_an_authorised_request_is_read_and_charged_to_its_key_once(counted, db_session):
    c, counter = counted
    _, headers = scoped_key(db_session, "write", rate_limit_per_minute=2)
    zipped = class_folder_zip()
    r = c.post("/v1/datasets", headers=headers, files={"file": ("d.zip", zipped)}, data={"name": "d"})
    assert r.status_code == 202, r.text
    assert counter.read > len(zipped)
    ds = ready_dataset(db_session, c.app.app.state.store, tenant_id(db_session))
    r = c.post("/v1/jobs", headers=headers, json={"kind": "pretrain", "dataset_id": ds.id, "epochs": 1})
    assert r.status_code == 202, r.text  # the second request of two a minute: one token each
    assert c.get("/v1/jobs", headers=headers).status_code == 429


def test_an_upload_the_quotas_already_refuse_is_refused_unread(counted, auth, db_session):
    c, counter = counted
    tid = tenant_id(db_session)
    with db_session() as s:
        tenant = s.get(Tenant, tid)
        tenant.max_active_jobs, tenant.max_stored_bytes = 1, 1000
        s.commit()
    ready_dataset(db_session, c.app.app.state.store, tid, source_bytes=999)
    small = class_folder_zip()
    r = c.post("/v1/datasets", headers=auth, files={"file": ("d.zip", small)}, data={"name": "d"})
    assert r.status_code == 413
    assert counter.read > 0  # one byte left: it had to be read to be refused
    with db_session() as s:
        s.get(Tenant, tid).max_stored_bytes = 999
        s.commit()
    _refused(c, counter, auth, 413, "quota_exceeded")  # no byte left
    with db_session() as s:
        s.get(Tenant, tid).max_stored_bytes = None
        s.add(Job(id="job_ingesting", tenant_id=tid, kind="ingest", status="running", spec={}))
        s.commit()
    _refused(c, counter, auth, 429, "quota_exceeded")  # no place for its ingest job


def test_unknown_routes_and_methods_are_still_404_and_405(counted, auth):
    c, _ = counted
    assert c.post("/v1/nothing-here", json={}).status_code == 404
    assert c.put("/v1/datasets", headers=auth, json={}).status_code == 405
    assert c.post("/healthz").status_code == 405


def test_a_client_expecting_100_continue_is_answered_before_it_sends_the_body(app):
    """Over a real socket: uvicorn sends ``100 Continue`` only when the app first reads the body, so a client
    that waits for it (curl does, for uploads over 1 MiB) never sends a refused upload at all."""
    head = (
        "POST /v1/datasets HTTP/1.1\r\nHost: jaga\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {1 << 30}\r\nExpect: 100-continue\r\n\r\n"
    )
    with live_server(app) as (host, port), socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
