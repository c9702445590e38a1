"""The reaper: re-queues (or ends) jobs whose worker stopped renewing its lease, sends jobs whose message was
never sent or was lost with the broker, and forgets workers that died. It runs in the API process, which
outlives any one worker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from api.core import jobs, workers
from api.core.db import session_scope
from api.core.queue import Send, enqueue
from api.core.settings import Settings

log = logging.getLogger(__name__)
#: Counts the messages waiting in the broker's queue; raises when the broker is unreachable.
Depth = Callable[[], int]
#: A queued job's message counts as possibly lost once it has waited this many sweeps.
LOST_AFTER_SWEEPS = 4


def _lost(settings: Settings, depth: Depth | None) -> list[str]:
    """Queued jobs whose message may be gone (a broker restarted without persistence): when fewer messages wait
    than jobs that have been waiting a while, send them all again; a duplicate is a no-op for the worker that
    takes it, since only one can lease the job."""
    if depth is None:
        return []
    with session_scope(settings.database_url, settings.db_pool_size) as s:
        waiting = jobs.waiting_jobs(s, sent_before_seconds=LOST_AFTER_SWEEPS * settings.reaper_interval_seconds)
    if not waiting:
        return []
    messages = depth()
    if messages >= len(waiting):
        return []
    log.warning("%d queued job(s) but %d message(s) in the broker: sending them again", len(waiting), messages)
    return waiting


def sweep(settings: Settings, send: Send, depth: Depth | None = None) -> list[str]:
    """One pass. Returns the ids it sent again."""
    with session_scope(settings.database_url, settings.db_pool_size) as s:
        requeue = jobs.reap_expired(s)
    with session_scope(settings.database_url, settings.db_pool_size) as s:
        unsent = jobs.unsent_jobs(s, older_than_seconds=max(30.0, settings.reaper_interval_seconds))
    sent = []
    for job_id in dict.fromkeys(requeue + unsent + _lost(settings, depth)):
        with session_scope(settings.database_url, settings.db_pool_size) as s:
            if enqueue(s, job_id=job_id, send=send):
                sent.append(job_id)
    with session_scope(settings.database_url, settings.db_pool_size) as s:
        workers.prune(s, older_than_seconds=settings.worker_silent_seconds * 10)
    return sent


class Sweeper:
    """``sweep`` every ``reaper_interval_seconds`` on a daemon thread; a failed pass (database or broker down)
    is logged and retried on the next."""

    def __init__(self, settings: Settings, send: Send, depth: Depth | None = None) -> None:
        self.settings = settings
        self.send = send
        self.depth = depth
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="jaga-sweeper")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.reaper_interval_seconds):
            try:
                sent = sweep(self.settings, self.send, self.depth)
            except Exception:  # keep sweeping; an outage is logged and retried
                log.warning("sweep failed", exc_info=True)
                continue
            if sent:
                log.info("sweeper sent %d job(s) again: %s", len(sent), ", ".join(sent))
