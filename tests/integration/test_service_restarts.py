"""Redis and PostgreSQL restarted under a running Celery worker (private servers, so the shared ones keep
serving): no job is lost, and /readyz says what is down meanwhile."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrations import upgrade
from tests.helpers import class_folder_zip, submit_job, upload_dataset, wait_for_job
from tests.services import PrivatePostgres, PrivateRedis

pytestmark = [pytest.mark.integration, pytest.mark.faults]
TINY = {"kind": "pretrain", "stem": "standard", "image_size": 16, "batch_size": 8, "checkpoint_every_steps": 2}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    upgrade(server.url)
    yield server
    server.close()


@pytest.fixture
def settings(make_settings, broker, postgres):  # type: ignore[no-untyped-def]
    return make_settings(
        database_url=postgres.url,
        broker_url=broker.url,
        lease_seconds=6,
        heartbeat_seconds=1,
        reaper_interval_seconds=1,
    )


def _not_ready(client, down: str) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/readyz")
    assert r.status_code == 503, r.text
    assert r.json()["checks"][down].startswith("unreachable")


def test_a_redis_restart_loses_no_job(client, auth, start_worker, broker):
    start_worker()
    ds = upload_dataset(client, auth, class_folder_zip(n_per_class=16, size=16))
    running = submit_job(client, auth, {**TINY, "dataset_id": ds["id"], "epochs": 4})
    waiting = submit_job(client, auth, {**TINY, "dataset_id": ds["id"], "epochs": 1, "seed": 1})
    wait_for_job(client, running["id"], lambda j: j["step"] >= 3, headers=auth, timeout=120)
    broker.stop()  # no persistence: the waiting job's message is gone
    _not_ready(client, "broker")
    during = submit_job(client, auth, {**TINY, "dataset_id": ds["id"], "epochs": 1, "seed": 2})  # not sent
    time.sleep(2)
    broker.start()
    jobs = [wait_for_job(client, j["id"], headers=auth, timeout=300) for j in (running, waiting, during)]
    assert [j["status"] for j in jobs] == ["succeeded"] * 3, jobs
    assert client.get("/readyz").status_code == 200


def test_a_postgres_restart_mid_job_loses_no_job(client, auth, start_worker, postgres):
    start_worker()
    ds = upload_dataset(client, auth, class_folder_zip(n_per_class=16, size=16))
    job = submit_job(client, auth, {**TINY, "dataset_id": ds["id"], "epochs": 5})
    wait_for_job(client, job["id"], lambda j: j["step"] >= 3, headers=auth, timeout=120)
    postgres.stop()
    _not_ready(client, "database")
    time.sleep(3)
    postgres.start()
    done = wait_for_job(client, job["id"], headers=auth, timeout=300)
    assert done["status"] == "succeeded", done
    assert done["step"] == done["total_steps"]
    assert client.get("/readyz").status_code == 200
