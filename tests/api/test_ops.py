"""The ops router: liveness, readiness (and what makes it fail) and metrics."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update

from api.core.models import Worker, utcnow
from api.main import create_app


def test_healthz_and_readyz_are_200_when_up(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "broker": "ok", "workers": "0 alive"}


def test_readyz_requires_a_live_worker_where_asked(make_settings, db_session):
    from api.core import workers

    settings = make_settings(ready_requires_worker=True, heartbeat_seconds=5)
    with TestClient(create_app(settings, make_session=db_session)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503, r.text
        assert r.json()["checks"]["workers"] == "0 alive"
        assert "workers" in r.json()["detail"]
        with db_session() as s:
            workers.beat(s, worker_id="w1", hostname="h", pid=1, queue=settings.queue_name, job_id=None)
            workers.beat(s, worker_id="w2", hostname="h", pid=2, queue="another-queue", job_id=None)
            s.commit()
        r = c.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["checks"]["workers"] == "1 alive"  # only workers of this queue count
        with db_session() as s:  # silent for longer than 3 heartbeats: gone
            s.execute(
                update(Worker).values(last_seen_at=utcnow() - timedelta(seconds=3 * settings.heartbeat_seconds + 1))
            )
            s.commit()
        assert c.get("/readyz").status_code == 503


def test_readyz_is_503_when_broker_unreachable(make_settings, db_session):
    app = create_app(make_settings(broker_url="redis://127.0.0.1:1/0"), make_session=db_session)
    with TestClient(app) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("unreachable")


def test_readyz_is_503_when_database_unreachable(make_settings):
    app = create_app(make_settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/nope"))
    with TestClient(app) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["database"].startswith("unreachable")


def test_metrics_exposes_jobs_queue_depth_and_durations(client, auth):
    client.get("/v1/jobs", headers=auth)
    text = client.get("/metrics").text
    assert 'jaga_jobs{kind="pretrain",status="queued"}' in text
    assert 'jaga_queue_depth{kind="pretrain"}' in text
    assert "jaga_job_duration_seconds_bucket" in text
    assert 'jaga_http_requests_total{method="GET",route="/v1/jobs",status="200"}' in text
