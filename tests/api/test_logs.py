"""Request ids on every response and error body, and JSON log lines carrying request, tenant and job ids."""

from __future__ import annotations

import json
import logging

import pytest

from api import logs
from api.main import create_app


def test_every_response_has_a_request_id_and_errors_carry_it(client, auth):
    ok = client.get("/v1/jobs", headers=auth)
    assert len(ok.headers["x-request-id"]) == 32
    missing = client.get("/v1/jobs/job_nope", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["request_id"] == missing.headers["x-request-id"]
    unauthorized = client.get("/v1/jobs")
    assert unauthorized.json()["request_id"] == unauthorized.headers["x-request-id"]
    assert ok.headers["x-request-id"] != missing.headers["x-request-id"]


def test_a_plain_client_request_id_is_kept_and_a_hostile_one_replaced(client, auth):
    r = client.get("/v1/jobs/job_nope", headers={**auth, "X-Request-ID": "trace-42.a:b"})
    assert r.headers["x-request-id"] == "trace-42.a:b"
    assert r.json()["request_id"] == "trace-42.a:b"
    r = client.get("/v1/jobs/job_nope", headers={**auth, "X-Request-ID": "x\\" + "y" * 300})
    assert r.headers["x-request-id"] != "x\\" + "y" * 300
    assert len(r.json()["request_id"]) == 32


def test_readiness_failures_carry_the_request_id_and_their_checks(make_settings, db_session):
    from fastapi.testclient import TestClient

    app = create_app(make_settings(broker_url="redis://127.0.0.1:1/0"), make_session=db_session)
    with TestClient(app) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["request_id"] == r.headers["x-request-id"]
    assert r.json()["checks"]["broker"].startswith("unreachable")


def test_log_lines_of_a_request_carry_its_request_and_tenant_ids(make_settings, db_session, new_key):
    """A submission whose broker is down logs a warning from the endpoint's thread; the tenant was bound by the
    authentication dependency on another thread."""
    from fastapi.testclient import TestClient

    from tests.api.factories import ready_dataset, tenant_id

    records: list[dict] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(json.loads(logs.JsonFormatter().format(record)))

    handler = Capture(level=logging.WARNING)
    logging.getLogger("api").addHandler(handler)
    try:
        app = create_app(make_settings(broker_url="redis://127.0.0.1:1/0"), make_session=db_session)
        headers = new_key("acme")
        with TestClient(app, raise_server_exceptions=False) as c:
            ds = ready_dataset(db_session, app.state.store, tenant_id(db_session))
            r = c.post(
                "/v1/jobs",
                headers=headers,
                json={"kind": "pretrain", "dataset_id": ds.id, "stem": "standard", "image_size": 16},
            )
    finally:
        logging.getLogger("api").removeHandler(handler)
    assert r.status_code == 202, r.text
    warning = next(rec for rec in records if "could not enqueue" in rec["message"])
    assert warning["request_id"] == r.headers["x-request-id"]
    assert warning["tenant_id"] == tenant_id(db_session)
    assert warning["level"] == "warning"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_formatters_put_the_ids_on_every_line(fmt):
    record = logging.LogRecord("jaga", logging.INFO, __file__, 1, "job %s started", ("j1",), None)
    token = logs.start(job_id="job_1", tenant_id="tenant_1")
    try:
        formatter = logs.JsonFormatter() if fmt == "json" else logs.ContextFormatter("%(message)s")
        line = formatter.format(record)
    finally:
        logs.end(token)
    if fmt == "json":
        assert json.loads(line) | {"time": "t"} == {
            "time": "t",
            "level": "info",
            "logger": "jaga",
            "message": "job j1 started",
            "job_id": "job_1",
            "tenant_id": "tenant_1",
        }
    else:
        assert line == "job j1 started [tenant_id=tenant_1 job_id=job_1]"
    assert logs.current() == {}
