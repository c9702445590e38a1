"""Faults injected into `jaga serve` (SQLite, filesystem broker, one supervised worker): the worker killed
mid-training, and the service itself stopped with SIGTERM mid-job."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import class_folder_zip, wait_for_job
from tests.servers import HEADERS, Server, pid_alive

pytestmark = pytest.mark.faults
# Short leases so a lost worker is noticed in seconds, not minutes.
FAST = {"JAGA_LEASE_SECONDS": "4", "JAGA_HEARTBEAT_SECONDS": "0.5", "JAGA_REAPER_INTERVAL_SECONDS": "1"}
TINY = {"kind": "pretrain", "stem": "standard", "image_size": 16, "batch_size": 8, "checkpoint_every_steps": 4}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "jaga-data"


@pytest.fixture
def server(data_dir: Path, tmp_path: Path) -> Iterator[Server]:
    s = Server(data_dir, tmp_path / "serve.log", FAST)
    yield s
    s.stop()


def _dataset(c: httpx.Client) -> str:
    r = c.post("/v1/datasets", files={"file": ("d.zip", class_folder_zip(n_per_class=16, size=16))}, data={"name": "f"})
    assert r.status_code == 202, r.text
    assert wait_for_job(c, r.json()["ingest_job_id"], timeout=120)["status"] == "succeeded"
    return str(r.json()["id"])


def _worker_running(data_dir: Path, job_id: str, timeout: float = 30) -> int:
    """The pid of the worker whose heartbeat says it runs ``job_id``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(data_dir / "jaga.db") as db:
            row = db.execute("SELECT pid FROM workers WHERE job_id = ?", (job_id,)).fetchone()
        if row:
            return int(row[0])
        time.sleep(0.2)
    raise AssertionError(f"no worker reported running {job_id}")


def _events(c: httpx.Client, job_id: str) -> list[dict]:
    return c.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}).json()["data"]


def _states(events: list[dict]) -> list[str]:
    return [e["data"]["status"] for e in events if e["type"] == "state"]


def _resumed_at(events: list[dict]) -> int:
    messages = [e["data"]["message"] for e in events if "resumed from checkpoint" in e["data"].get("message", "")]
    assert len(messages) == 1, messages
    return int(messages[0].rsplit(" ", 1)[-1])


def test_killed_worker_is_restarted_and_its_job_resumes_from_its_checkpoint(server: Server, data_dir: Path):
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as c:
        dataset_id = _dataset(c)
        job = c.post("/v1/jobs", json={**TINY, "dataset_id": dataset_id, "epochs": 8}).json()
        pid = _worker_running(data_dir, job["id"])
        at_kill = wait_for_job(c, job["id"], lambda j: j["step"] >= 9, timeout=120)["step"]
        os.kill(pid, signal.SIGKILL)
        job = wait_for_job(c, job["id"], timeout=300)
        assert job["status"] == "succeeded", job
        assert job["attempt"] == 2
        assert job["step"] == job["total_steps"] == 32
        events = _events(c, job["id"])
        # One attempt at a time: running, handed back by the reaper, running again, done.
        assert _states(events) == ["queued", "running", "queued", "running", "succeeded"]
        assert any(e["data"].get("reason", "").startswith("lease expired") for e in events)
        resumed = _resumed_at(events)
        assert resumed >= 4  # a periodic checkpoint from before the kill
        assert resumed % 4 == 0
        assert resumed <= at_kill + 4  # not from the start, nor from beyond what the dead worker reached
        epochs = [e["data"]["epoch"] for e in events if e["type"] == "metrics" and "loss" in e["data"]]
        assert epochs == sorted(epochs)  # the counter continued, nothing ran twice at once
        assert epochs[-1] == 8
        assert not pid_alive(pid)
        # The dead worker's row is pruned once it has been silent 10 x 3 heartbeats (15 s here); the job may
        # finish before that on a fast CPU.
        deadline = time.monotonic() + 60
        while True:
            with sqlite3.connect(data_dir / "jaga.db") as db:
                pids = [r[0] for r in db.execute("SELECT pid FROM workers")]
            if pid not in pids or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert pids  # the supervisor started another worker
        assert pid not in pids
        assert c.get("/readyz").status_code == 200
        assert "restarting" in server.log.read_text()


def test_sigterm_checkpoints_hands_the_job_back_and_it_resumes_after_restart(data_dir: Path, tmp_path: Path):
    server = Server(data_dir, tmp_path / "serve.log", FAST)
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as c:
            dataset_id = _dataset(c)
            job = c.post("/v1/jobs", json={**TINY, "dataset_id": dataset_id, "epochs": 6}).json()
            pid = _worker_running(data_dir, job["id"])
            wait_for_job(c, job["id"], lambda j: j["step"] >= 5, timeout=120)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.stop()
    assert not pid_alive(pid), "the worker outlived the service"
    assert "jaga: stopped" in server.log.read_text()
    with sqlite3.connect(data_dir / "jaga.db") as db:
        status, step = db.execute("SELECT status, step FROM jobs WHERE id = ?", (job["id"],)).fetchone()
        (reason,) = db.execute(
            "SELECT data FROM job_events WHERE job_id = ? AND type = 'state' ORDER BY id DESC LIMIT 1", (job["id"],)
        ).fetchone()
    assert status == "queued"
    assert "worker shutting down" in reason
    assert (data_dir / "artifacts" / "jobs" / job["id"] / "checkpoint.pt").exists()

    again = Server(data_dir, tmp_path / "serve2.log", FAST)
    try:
        with httpx.Client(base_url=again.url, headers=HEADERS, timeout=60) as c:
            done = wait_for_job(c, job["id"], timeout=300)
            assert done["status"] == "succeeded", done
            assert done["attempt"] == 2
            assert _resumed_at(_events(c, job["id"])) >= step  # the checkpoint written on the way out
    finally:
        again.stop()


def test_a_stalled_worker_gives_its_job_up_exits_and_the_job_resumes(data_dir: Path, tmp_path: Path):
    """A hang the heartbeat thread survives (here: the dataset's file is a FIFO no one writes, so opening it never
    returns): past JAGA_STALL_SECONDS the worker gives the lease up and exits; the supervisor starts another."""
    server = Server(data_dir, tmp_path / "serve.log", {**FAST, "JAGA_STALL_SECONDS": "3"})
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as c:
            dataset_id = _dataset(c)
            images = data_dir / "artifacts" / "datasets" / dataset_id / "images.npy"
            images.rename(images.with_name("real.npy"))
            os.mkfifo(images)
            job = c.post("/v1/jobs", json={**TINY, "dataset_id": dataset_id, "epochs": 2}).json()
            pid = _worker_running(data_dir, job["id"])
            deadline = time.monotonic() + 60
            while not any(e["type"] == "warning" for e in _events(c, job["id"])):
                assert time.monotonic() < deadline, "the stalled job was never given up"
                time.sleep(0.2)
            images.unlink()  # the next attempt finds the real file
            images.with_name("real.npy").rename(images)
            done = wait_for_job(c, job["id"], timeout=300)
            assert done["status"] == "succeeded", done
            assert done["attempt"] == 2
            events = _events(c, job["id"])
            assert _states(events) == ["queued", "running", "queued", "running", "succeeded"]
            assert [e["data"]["code"] for e in events if e["type"] == "warning"] == ["stalled"]
            assert not pid_alive(pid)
    finally:
        server.stop()
    log = server.log.read_text()
    assert "no sign of life" in log
    assert "exited with status 70; restarting" in log


def test_a_worker_frozen_past_the_stall_limit_is_not_taken_for_a_stalled_one(data_dir: Path, tmp_path: Path):
    """SIGSTOP freezes every thread, the heartbeat's too: on SIGCONT the job goes on (its lease is longer than the
    pause here), rather than being given up for the seconds the whole process did not run."""
    env = {**FAST, "JAGA_LEASE_SECONDS": "60", "JAGA_STALL_SECONDS": "5"}
    server = Server(data_dir, tmp_path / "serve.log", env)
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as c:
            dataset_id = _dataset(c)
            job = c.post("/v1/jobs", json={**TINY, "dataset_id": dataset_id, "epochs": 4}).json()
            pid = _worker_running(data_dir, job["id"])
            wait_for_job(c, job["id"], lambda j: j["step"] >= 2, timeout=120)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(12)
            os.kill(pid, signal.SIGCONT)
            done = wait_for_job(c, job["id"], timeout=300)
            assert done["status"] == "succeeded", done
            assert done["attempt"] == 1
            assert not any(e["type"] == "warning" for e in _events(c, job["id"]))
            assert pid_alive(pid)
    finally:
        server.stop()
    assert "no sign of life" not in server.log.read_text()
