"""The job runner: leases, cancellation, shutdown and resume, lost leases, and the reaper's sweep. The API
(committing for real) submits jobs; the test calls ``run_job`` directly."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from functools import partial

from sqlalchemy import update

from api.core import jobs
from api.core.db import session_scope
from api.core.models import Job, utcnow
from api.core.sweeper import LOST_AFTER_SWEEPS, sweep
from tests.helpers import class_folder_zip, wait_for_job
from tests.worker.helpers import TINY, get_job, job_events, submit
from worker.context import JobContext
from worker.kinds import HANDLERS
from worker.runner import record_success, run_job


def test_cancel_running_job_stops_within_a_step(client, auth, run, dataset, settings):
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 500, **TINY})
    result: list[str | None] = []
    t = threading.Thread(target=lambda: result.append(run(job["id"])))
    t.start()
    wait_for_job(client, job["id"], lambda j: j["step"] >= 2, headers=auth)
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()["status"] == "cancelling"
    t.join(timeout=30)
    assert result == ["cancelled"]
    assert get_job(client, auth, job["id"])["status"] == "cancelled"
    assert not settings.artifacts.joinpath("jobs", job["id"]).exists()  # no checkpoint left behind


def test_shutdown_checkpoints_requeues_and_resumes(client, auth, run, dataset, sent, settings):
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 3, **TINY})
    shutdown = threading.Event()
    result: list[str | None] = []
    t = threading.Thread(target=lambda: result.append(run(job["id"], shutdown=shutdown)))
    t.start()
    wait_for_job(client, job["id"], lambda j: j["step"] >= 3, headers=auth)
    shutdown.set()
    t.join(timeout=30)
    assert result == ["queued"]
    assert sent[-1] == job["id"]
    assert settings.artifacts.joinpath("jobs", job["id"], "checkpoint.pt").exists()
    assert get_job(client, auth, job["id"])["status"] == "queued"
    assert run(job["id"]) == "succeeded"
    done = get_job(client, auth, job["id"])
    assert done["attempt"] == 2
    assert done["step"] == done["total_steps"]
    assert any("resumed from checkpoint" in e["data"].get("message", "") for e in job_events(client, auth, job["id"]))


def test_job_leased_elsewhere_or_terminal_is_not_run(client, auth, run, dataset, settings):
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], **TINY})
    with session_scope(settings.database_url) as s:
        assert jobs.lease_job(s, job_id=job["id"], owner="other", lease_seconds=60) is not None
    assert run(job["id"]) is None
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job["id"]).values(status="succeeded"))
    assert run(job["id"]) is None


def test_lost_lease_stops_without_writing(client, auth, run, dataset, settings):
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 500, **TINY})
    result: list[str | None] = []
    t = threading.Thread(target=lambda: result.append(run(job["id"])))
    t.start()
    wait_for_job(client, job["id"], lambda j: j["step"] >= 2, headers=auth)
    with session_scope(settings.database_url) as s:  # another worker took the job over
        s.execute(update(Job).where(Job.id == job["id"]).values(lease_owner="thief"))
    t.join(timeout=30)
    assert result == [None]
    job = get_job(client, auth, job["id"])
    assert job["status"] == "running"
    assert job["result"] is None


def test_result_of_a_job_whose_lease_was_lost_after_saving_leaves_no_files(client, auth, dataset, settings):
    """The lease can go between the handler saving its model and the commit: the model file must go with the
    discarded row, and the checkpoint stay for the job's new owner."""
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY})
    with session_scope(settings.database_url) as s:
        leased = jobs.lease_job(s, job_id=job["id"], owner="slow", lease_seconds=60)
    ctx = JobContext(leased, settings, "slow", threading.Event())
    outcome = HANDLERS["pretrain"](ctx)
    model_dir = settings.artifacts / "models" / outcome.result["model_id"]
    assert (model_dir / "model.pt").exists()
    assert outcome.artifacts == [model_dir]
    with session_scope(settings.database_url) as s:  # another worker took the job over meanwhile
        s.execute(update(Job).where(Job.id == job["id"]).values(lease_owner="thief"))
    assert record_success(ctx, outcome) is False
    assert not model_dir.exists()
    assert settings.artifacts.joinpath("jobs", job["id"], "checkpoint.pt").exists()
    assert client.get("/v1/models", headers=auth).json()["data"] == []
    assert get_job(client, auth, job["id"])["status"] == "running"


def test_index_result_discarded_with_the_lease_leaves_no_index_files(client, auth, run, dataset, settings):
    pretrain = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY})
    assert run(pretrain["id"]) == "succeeded"
    model_id = get_job(client, auth, pretrain["id"])["result"]["model_id"]
    job = submit(client, auth, {"kind": "index", "model_id": model_id, "dataset_id": dataset["id"]})
    with session_scope(settings.database_url) as s:
        leased = jobs.lease_job(s, job_id=job["id"], owner="slow", lease_seconds=60)
    ctx = JobContext(leased, settings, "slow", threading.Event())
    outcome = HANDLERS["index"](ctx)
    index_dir = settings.artifacts / "indexes" / outcome.result["index_id"]
    assert index_dir.exists()
    assert outcome.artifacts == [index_dir]
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job["id"]).values(lease_owner="thief"))
    assert record_success(ctx, outcome) is False
    assert not index_dir.exists()
    assert client.get("/v1/indexes", headers=auth).json()["data"] == []


def test_sweep_requeues_expired_fails_exhausted_and_resends_unsent(client, auth, dataset, settings, sent):
    ids = [
        submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "seed": i, **TINY})["id"]
        for i in range(4)
    ]
    past = utcnow() - timedelta(minutes=5)
    with session_scope(settings.database_url) as s:
        for job_id in ids[:3]:
            jobs.lease_job(s, job_id=job_id, owner="dead", lease_seconds=60)
        s.execute(update(Job).where(Job.id.in_(ids[:3])).values(lease_expires_at=past))
        s.execute(update(Job).where(Job.id == ids[1]).values(attempt=3))
        s.execute(update(Job).where(Job.id == ids[2]).values(status="cancelling"))
        s.execute(update(Job).where(Job.id == ids[3]).values(enqueued_at=None, created_at=past))
    sent.clear()
    sweep(settings, lambda j: sent.append(j) or True)
    statuses = [get_job(client, auth, j)["status"] for j in ids]
    assert statuses == ["queued", "failed", "cancelled", "queued"]
    assert get_job(client, auth, ids[1])["error"]["code"] == "lease_expired"
    assert sorted(sent) == sorted([ids[0], ids[3]])
    sent.clear()
    sweep(settings, lambda j: sent.append(j) or True)
    assert sent == []  # both were marked sent


def test_failed_ingest_by_reaper_fails_dataset(client, auth, settings, sent):
    ds = client.post(
        "/v1/datasets", headers=auth, files={"file": ("x.zip", class_folder_zip())}, data={"name": "d"}
    ).json()
    with session_scope(settings.database_url) as s:
        jobs.lease_job(s, job_id=ds["ingest_job_id"], owner="dead", lease_seconds=60)
        s.execute(
            update(Job)
            .where(Job.id == ds["ingest_job_id"])
            .values(attempt=3, lease_expires_at=utcnow() - timedelta(minutes=1))
        )
    sweep(settings, lambda j: sent.append(j) or True)
    ds = client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()
    assert ds["status"] == "failed"
    assert ds["error"]["code"] == "lease_expired"


def test_sweep_resends_jobs_whose_messages_the_broker_lost(client, auth, dataset, settings):
    """Messages in a real Redis queue no worker reads: while one waits per queued job nothing is sent again; once
    the queue is emptied (a broker restarted without persistence), every job waiting that long is sent again."""
    from api.core.queue import make_celery, queue_depth, send_job

    celery = make_celery(settings)
    celery.control.purge()
    depth = partial(queue_depth, celery, settings.queue_name)
    ids = [
        submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "seed": i, **TINY})["id"]
        for i in range(2)
    ]
    assert depth() == 2
    old = utcnow() - timedelta(seconds=LOST_AFTER_SWEEPS * settings.reaper_interval_seconds + 1)
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id.in_(ids)).values(enqueued_at=old))
    send = partial(send_job, celery)
    assert sweep(settings, send, depth) == []
    assert celery.control.purge() == 2
    assert depth() == 0
    assert sorted(sweep(settings, send, depth)) == sorted(ids)
    assert depth() == 2
    assert sweep(settings, send, depth) == []  # just sent: not waiting long enough to be suspected again


def test_a_stalled_job_is_given_up_and_resumes_on_the_next_attempt(client, auth, dataset, settings, sent):
    """The job's thread hangs (opening its dataset blocks: the array's file is a FIFO no one writes) while the
    heartbeat thread lives on: past ``stall_seconds`` the heartbeat gives the lease up instead of renewing it."""
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY})
    images = settings.artifacts / "datasets" / dataset["id"] / "images.npy"
    images.rename(images.with_name("real.npy"))
    os.mkfifo(images)
    stalled = threading.Event()
    result: list[str | None] = []
    stalling = settings.model_copy(update={"stall_seconds": 1.0})
    t = threading.Thread(
        target=lambda: result.append(
            run_job(job["id"], settings=stalling, send=lambda j: sent.append(j) or True, on_stall=stalled.set)
        )
    )
    t.start()
    assert stalled.wait(timeout=30)
    warnings = [e["data"] for e in job_events(client, auth, job["id"]) if e["type"] == "warning"]
    assert [w["code"] for w in warnings] == ["stalled"]
    assert "no sign of life" in warnings[0]["message"]
    with session_scope(settings.database_url) as s:
        row = s.get(Job, job["id"])
        assert (row.status, row.lease_owner) == ("running", None)
    sent.clear()
    sweep(settings, lambda j: sent.append(j) or True)
    assert sent == [job["id"]]
    assert get_job(client, auth, job["id"])["status"] == "queued"
    os.close(os.open(images, os.O_WRONLY))  # wake the stuck thread: it reads nothing, fails, and writes nothing
    t.join(timeout=30)
    assert not t.is_alive()
    assert get_job(client, auth, job["id"])["status"] == "queued"
    images.unlink()
    images.with_name("real.npy").rename(images)
    assert run_job(job["id"], settings=settings, send=lambda j: True) == "succeeded"
    assert get_job(client, auth, job["id"])["attempt"] == 2


def test_a_job_showing_signs_of_life_is_not_given_up(client, auth, dataset, settings):
    # A time budget: the job lasts twice the limit on any machine, each of its steps far less.
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "max_minutes": 0.14, **TINY})
    stalled = threading.Event()
    lively = settings.model_copy(update={"stall_seconds": 4.0})
    started = time.monotonic()
    assert run_job(job["id"], settings=lively, send=lambda j: True, on_stall=stalled.set) == "succeeded"
    assert time.monotonic() - started > 8
    assert not stalled.is_set()
