"""Faults injected into Celery workers on Redis and PostgreSQL: a worker killed mid-training, and one paused
past its lease while another takes its job over."""

from __future__ import annotations

import os
import signal

import pytest

from tests.helpers import class_folder_zip, make_zip, submit_job, upload_dataset, wait_for_job

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
    job = submit_job(client, auth, {**TINY, "dataset_id": ds["id"], "epochs": 8})
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
    assert epochs[-1] == 8
    assert first.proc.poll() is None  # the paused worker lived on, and gave the job up
    assert "lease lost to another worker" in first.log_path.read_text()


def test_cancel_in_every_state(client, auth, start_worker):
    start_worker()
    ds = upload_dataset(client, auth, class_folder_zip(n_per_class=16, size=16))

    def cancel(job_id: str) -> dict:
        r = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
        assert r.status_code == 202, r.text
        return dict(r.json())

    def ended(job_id: str, status: str) -> None:
        """Cancelling a finished job is a 409 that leaves it as it was."""
        r = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
        assert r.status_code == 409, r.text
        assert r.json()["code"] == "job_finished"
        assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == status

    long = submit_job(client, auth, {**TINY, "dataset_id": ds["id"], "epochs": 1000})
    wait_for_job(client, long["id"], lambda j: j["step"] >= 2, headers=auth, timeout=120)
    queued = submit_job(client, auth, {**TINY, "dataset_id": ds["id"], "epochs": 1, "seed": 1})  # behind `long`
    assert cancel(queued["id"])["status"] == "cancelled"
    assert cancel(long["id"])["status"] == "cancelling"
    assert cancel(long["id"])["status"] in ("cancelling", "cancelled")  # asking twice changes nothing
    assert wait_for_job(client, long["id"], headers=auth, timeout=60)["status"] == "cancelled"
    ended(long["id"], "cancelled")
    done = submit_job(client, auth, {**TINY, "dataset_id": ds["id"], "epochs": 1, "seed": 2})
    assert wait_for_job(client, done["id"], headers=auth, timeout=120)["status"] == "succeeded"
    ended(done["id"], "succeeded")
    r = client.post(
        "/v1/datasets", headers=auth, files={"file": ("x.zip", make_zip({"a.txt": b"no"}))}, data={"name": "x"}
    )
    failed = wait_for_job(client, r.json()["ingest_job_id"], headers=auth, timeout=60)
    assert failed["status"] == "failed"
    ended(failed["id"], "failed")
    ended(queued["id"], "cancelled")
    # The cancelled job's message was still in the queue: the worker took it and left it alone.
    assert client.get(f"/v1/jobs/{queued['id']}", headers=auth).json()["attempt"] == 0
    assert states(events(client, auth, queued["id"])) == ["queued", "cancelled"]


def test_concurrent_submissions_with_one_idempotency_key_make_one_job(settings, client, auth, start_worker):
    """20 real connections at once, one key, on PostgreSQL: one job, and every answer names it."""
    import threading

    import httpx

    from api.main import create_app
    from tests.api.live import live_server

    start_worker()
    ds = upload_dataset(client, auth, class_folder_zip(n_per_class=16, size=16))
    body = {**TINY, "dataset_id": ds["id"], "epochs": 1}
    start = threading.Barrier(20)
    answers: list[httpx.Response] = []

    def submit(url: str) -> None:
        with httpx.Client(base_url=url, headers={**auth, "Idempotency-Key": "once"}, timeout=60) as c:
            start.wait()
            answers.append(c.post("/v1/jobs", json=body))

    with live_server(create_app(settings)) as (host, port):
        threads = [threading.Thread(target=submit, args=(f"http://{host}:{port}",)) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(answers) == 20
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 19 + [202], [r.text for r in answers if r.status_code >= 300]
    assert len({r.json()["id"] for r in answers}) == 1
    assert len(client.get("/v1/jobs?kind=pretrain", headers=auth).json()["data"]) == 1
