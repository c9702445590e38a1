"""``jaga serve``'s worker supervisor on real child processes: restarts after a death, backs off in a crash
loop, stops its worker with SIGTERM and kills one that ignores it."""

from __future__ import annotations

import signal
import sys
import time

from api.supervisor import WorkerSupervisor
from tests.servers import pid_alive

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _until(condition, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_worker_is_replaced_and_stop_terminates_it():
    sup = WorkerSupervisor(SLEEPER, {}, poll_seconds=0.05)
    sup.start()
    first = sup.pid
    assert first is not None
    assert pid_alive(first)
    sup.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    _until(lambda: sup.restarts == 1)
    second = sup.pid
    assert second is not None
    assert second != first
    assert pid_alive(second)
    assert sup.stop() == -signal.SIGTERM
    assert not pid_alive(second)


def test_a_crash_loop_backs_off():
    sup = WorkerSupervisor([sys.executable, "-c", "raise SystemExit(3)"], {}, poll_seconds=0.01, max_backoff=4)
    started = time.monotonic()
    sup.start()
    _until(lambda: sup.restarts >= 3)
    elapsed = time.monotonic() - started
    sup.stop()
    assert elapsed >= 1 + 2 + 4 - 0.5  # waits of 1, 2 and 4 s (capped) before restarts 1 to 3


def test_a_worker_that_ignores_sigterm_is_killed_after_the_timeout():
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
    ]
    sup = WorkerSupervisor(stubborn, {}, stop_timeout=1, poll_seconds=0.05)
    sup.start()
    time.sleep(0.5)  # let it install its handler
    assert sup.stop() == -signal.SIGKILL
    assert sup.restarts == 0
