"""Faults injected into Celery workers on Redis and PostgreSQL: a worker killed mid-training, and one paused
past its lease while another takes its job over."""

from __future__ import annotations

import os
import signal

import pytest

from tests.helpers import class_folder_zip, submit_job, upload_dataset, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.faults]
TINY = {"kind": "pretrain", "stem": "standard", "image_size": 16, "batch_size": 8, "checkpoint_every_steps": 2}


def events(client, auth, job_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return list(client.get(f"/v1/jobs/{job_id}/events?limit=200", headers=auth).json()["data"])


def states(evs: list[dict]) -> list[str]:
    return [e["data"]["status"] for e in evs if e["type"] == "state"]


def test_killed_worker_job_is_reaped_and_resumed_by_another(client, auth, start_worker):
    first = start_worker()
    ds = upload_dataset(client, auth, class_folder_zip(n_per_class=16, size=16))
    job = submit_job(client, auth, {**TINY, "dataset_id": ds["id"], "epochs": 8})
    wait_for_job(client, job["id"], lambda j: j["step"] >= 5, headers=auth, timeout=120)
    first.kill()  # no shutdown, no checkpoint on exit: only the periodic one survives
    start_worker()
    job = wait_for_job(client, job["id"], headers=auth, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2
    evs = events(client, auth, job["id"])
    assert states(evs) == ["queued", "running", "queued", "running", "succeeded"]
    assert any(e["data"].get("reason", "").startswith("lease expired") for e in evs)
    assert any("resumed from checkpoint" in e["data"].get("message", "") for e in evs)


def test_a_paused_worker_past_its_lease_writes_nothing_once_another_owns_the_job(client, auth, start_worker):
    first = start_worker()
    ds = upload_dataset(client, auth, class_folder_zip(n_per_class=16, size=16))
    job = submit_job(client, auth, {**TINY, "dataset_id": ds["id"], "epochs": 12})
    wait_for_job(client, job["id"], lambda j: j["step"] >= 4, headers=auth, timeout=120)
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGSTOP)
    try:
        start_worker()
        wait_for_job(client, job["id"], lambda j: j["attempt"] == 2 and j["step"] >= 8, headers=auth, timeout=120)
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)  # it wakes up mid-step, still believing it runs the job
    job = wait_for_job(client, job["id"], headers=auth, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2
    evs = events(client, auth, job["id"])
    assert states(evs) == ["queued", "running", "queued", "running", "succeeded"]
    second_run = max(i for i, e in enumerate(evs) if e["data"].get("status") == "running")
    epochs = [e["data"]["epoch"] for e in evs[second_run:] if e["type"] == "metrics" and "loss" in e["data"]]
    assert epochs == sorted(set(epochs))  # one writer: no epoch reported twice, none out of order
    assert epochs[-1] == 12
    assert first.proc.poll() is None  # the paused worker lived on, and gave the job up
    assert "lease lost to another worker" in first.log_path.read_text()
