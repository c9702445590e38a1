"""``jaga serve``'s worker: a child process restarted when it dies and stopped (warm: its job checkpoints and
goes back to the queue) when the service stops."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class WorkerSupervisor:
    """Keeps one worker process running. ``restarts`` counts the deaths it recovered from."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        *,
        stop_timeout: float = 60.0,
        poll_seconds: float = 0.5,
        max_backoff: float = 30.0,
        healthy_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = command
        self.env = env
        self.stop_timeout = stop_timeout
        self.poll_seconds = poll_seconds
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self.clock = clock
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="jaga-worker-supervisor")
        self._thread.start()

    def _spawn(self) -> None:
        # Its own session: a Ctrl-C in the terminal reaches only ``jaga serve``, which then stops the worker in order.
        self.proc = subprocess.Popen(self.command, env=self.env, start_new_session=True)
        self._started = self.clock()
        log.info("worker started (pid %d)", self.proc.pid)

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            assert self.proc is not None
            try:
                code = self.proc.wait(timeout=self.poll_seconds)
            except subprocess.TimeoutExpired:
                if self.clock() - self._started > self.healthy_after:
                    backoff = 1.0  # it ran for a while: the next death is not a crash loop
                continue
            if self._stopping.is_set():
                return
            log.warning("worker (pid %d) exited with status %s; restarting in %.0f s", self.proc.pid, code, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(2 * backoff, self.max_backoff)
            with self._lock:
                if self._stopping.is_set():
                    return
                self._spawn()
                self.restarts += 1

    def stop(self) -> int | None:
        """SIGTERM the worker (warm shutdown) and wait for it; SIGKILL after ``stop_timeout``. Returns its exit
        status."""
        with self._lock:
            self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            log.info("stopping worker (pid %d): its job checkpoints and goes back to the queue", proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker (pid %d) did not stop in %.0f s; killing it", proc.pid, self.stop_timeout)
                proc.kill()
                proc.wait()
        return proc.returncode
