"""Integration: a real Celery worker process consuming from real Redis, state in real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from api.cli import worker_command

        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            worker_command(),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if b"ready." in self.log_path.read_bytes():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"worker did not start:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # The log is attached to failures by the test's own asserts; keep it on disk for debugging.


@pytest.fixture
def settings(make_settings, clean_database):  # type: ignore[no-untyped-def]
    return make_settings(lease_seconds=6, heartbeat_seconds=1, reaper_interval_seconds=2)


@pytest.fixture
def worker_env(settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAGA_")}
    env.update(
        {
            "JAGA_DATABASE_URL": settings.database_url,
            "JAGA_BROKER_URL": settings.broker_url,
            "JAGA_DATA_DIR": str(settings.data_dir),
            "JAGA_QUEUE_NAME": settings.queue_name,
            "JAGA_LEASE_SECONDS": str(settings.lease_seconds),
            "JAGA_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
            "JAGA_REAPER_INTERVAL_SECONDS": str(settings.reaper_interval_seconds),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
    )
    return env


@pytest.fixture
def start_worker(worker_env, tmp_path) -> Iterator[Callable[[], WorkerProcess]]:  # type: ignore[no-untyped-def]
    started: list[WorkerProcess] = []

    def _start() -> WorkerProcess:
        w = WorkerProcess(worker_env, tmp_path / f"worker{len(started)}.log")
        started.append(w)
        w.start()
        return w

    yield _start
    for w in started:
        w.stop()
