"""The Docker image run as docker-compose.yml runs it: a one-shot `jaga db upgrade`, the API (`jaga serve
--no-worker`) and a worker (`jaga worker`), each a container of the image, on a fresh database of the test
PostgreSQL and on the test Redis (host network). A job survives its worker container's stop and start.

Skipped unless ``JAGA_TEST_IMAGE`` names a built image (`make image-test` builds one and runs this).
``JAGA_CONTAINER_CLI`` is the container command (default ``docker``; ``podman`` works too) and
``JAGA_CONTAINER_RUN_ARGS`` adds flags to each ``run`` (a sandbox's ulimits, say)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, make_url, text

from tests.helpers import class_folder_zip, png_bytes, upload_dataset, wait_for_job
from tests.servers import free_port

IMAGE = os.environ.get("JAGA_TEST_IMAGE", "")
CLI = shlex.split(os.environ.get("JAGA_CONTAINER_CLI", "docker"))
RUN_ARGS = shlex.split(os.environ.get("JAGA_CONTAINER_RUN_ARGS", ""))
KEY = "image-test-bootstrap-key-0123456789abcdef"

pytestmark = [pytest.mark.image, pytest.mark.skipif(not IMAGE, reason="JAGA_TEST_IMAGE names no built image")]


@dataclass
class Stack:
    """The compose file's services as containers named ``<prefix>-<service>``, sharing one artifact volume."""

    prefix: str
    env: dict[str, str]
    port: int
    names: list[str] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0 or not check, f"{args[0]} exited {done.returncode}: {done.stderr[-3000:]}"
        return done

    def run(self, service: str, *command: str, detach: bool = True, env: dict[str, str] | None = None) -> str:
        flags = [f"--env={k}={v}" for k, v in {**self.env, **(env or {})}.items()]
        flags += ["--network=host", f"--volume={self.prefix}-artifacts:/artifacts", *RUN_ARGS]
        if detach:
            name = f"{self.prefix}-{service}"
            self.names.append(name)
            return self.cli("run", "--detach", f"--name={name}", *flags, IMAGE, *command).stdout.strip()
        return self.cli("run", "--rm", *flags, IMAGE, *command, timeout=300).stdout

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.cli('logs', n, check=False).stdout[-3000:]}" for n in self.names)


@pytest.fixture
def stack(make_settings) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    test = make_settings()  # the test PostgreSQL server and Redis database
    prefix = f"jaga-image-test-{uuid.uuid4().hex[:8]}"
    database = make_url(test.database_url).set(database=prefix.replace("-", "_"))
    admin = create_engine(database.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database.database}"'))
    env = {
        "JAGA_ENV": "production",
        "JAGA_DATABASE_URL": database.render_as_string(hide_password=False),
        "JAGA_BROKER_URL": test.broker_url,
        "JAGA_QUEUE_NAME": prefix,
        "JAGA_ARTIFACT_ROOT": "/artifacts",
        "JAGA_BOOTSTRAP_KEY": KEY,
    }
    s = Stack(prefix, env, free_port())
    try:
        yield s
    finally:
        for name in s.names:
            s.cli("rm", "--force", name, check=False)
        s.cli("volume", "rm", "--force", f"{prefix}-artifacts", check=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database.database}" WITH (FORCE)'))
        admin.dispose()


def _wait_ready(url: str, stack: Stack, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200 and r.json()["checks"].get("workers", "0 alive") != "0 alive":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the API did not become ready:\n{stack.logs()}")


def test_the_image_serves_as_compose_runs_it_and_jobs_survive_a_worker_restart(stack: Stack) -> None:
    assert "upgraded" in stack.run("migrate", "jaga", "db", "upgrade", detach=False)
    stack.run("api", "jaga", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(stack.port))
    stack.run("worker", "jaga", "worker", env={"JAGA_DEVICE": os.environ.get("JAGA_TEST_IMAGE_DEVICE", "cpu")})
    url = f"http://127.0.0.1:{stack.port}"
    _wait_ready(url, stack)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        ds = upload_dataset(c, None, class_folder_zip(n_per_class=64, size=32), name="image")
        body = {"kind": "pretrain", "dataset_id": ds["id"], "epochs": 40, "image_size": 32, "batch_size": 16}
        r = c.post("/v1/jobs", json={**body, "checkpoint_every_steps": 10})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_for_job(c, job_id, until=lambda j: (j.get("step") or 0) >= 25, timeout=300, interval=0.5)
        # SIGTERM, as `docker compose stop` sends: the job checkpoints and goes back to the queue.
        stack.cli("stop", "--time=120", f"{stack.prefix}-worker")
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "queued", stack.logs()
        stack.cli("start", f"{stack.prefix}-worker")
        job = wait_for_job(c, job_id, timeout=600)
        assert job["status"] == "succeeded", (job, stack.logs())
        events = c.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}).json()["data"]
        assert any("resumed from checkpoint" in e["data"].get("message", "") for e in events), events

        model_id = job["result"]["model_id"]
        query = png_bytes(np.zeros((32, 32), np.uint8))
        r = c.post(f"/v1/models/{model_id}/embeddings", files=[("files", ("q.png", query))])
        assert r.status_code == 200, r.text
        assert r.json()["dim"] == 512
        r = c.get(f"/v1/models/{model_id}/download", params={"format": "onnx"})
        assert r.status_code == 200, r.text
        bad = c.post("/v1/jobs", json={**body, "temperature": -1})
        assert (bad.status_code, bad.headers["content-type"]) == (422, "application/problem+json")
        assert bad.json()["errors"][0]["field"] == "temperature"
