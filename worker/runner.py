"""Running one job: lease it, keep the lease alive, dispatch to its handler, record how it ended; plain
Python, callable without a broker."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from api import logs
from api.core import jobs
from api.core.db import UNAVAILABLE, session_scope
from api.core.queue import Send, enqueue
from api.core.settings import Settings
from ssl_core.train import TrainingStopped
from worker.context import JobContext, JobFailed, Outcome
from worker.kinds import HANDLERS

log = logging.getLogger(__name__)
#: Set when the worker process is asked to shut down: running jobs checkpoint and go back to the queue.
SHUTDOWN = threading.Event()
#: The job this process is running (``{"id": ...}``), reported by the worker's heartbeat.
CURRENT_JOB: dict[str, str] = {}


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _give_up(ctx: JobContext, idle: float) -> None:
    """Expire the lease of a job stalled for ``idle`` seconds, saying so in its events."""
    ctx.lease_lost.set()  # should the job wake up, it stops at its next step without writing
    message = (
        f"no sign of life for {idle:.0f} s (stall_seconds={ctx.settings.stall_seconds:g}): the worker gave the "
        "job up; it resumes from its last checkpoint"
    )
    log.error("job %s: %s", ctx.job_id, message)
    try:
        with ctx.session() as s:
            jobs.give_up_lease(s, job_id=ctx.job_id, owner=ctx.owner, warning={"code": "stalled", "message": message})
    except Exception:  # the lease lapses on its own
        log.warning("could not give up the lease of %s", ctx.job_id, exc_info=True)


def _heartbeat(ctx: JobContext, stop: threading.Event, on_stall: Callable[[], None]) -> None:
    interval = ctx.settings.heartbeat_seconds
    last = time.monotonic()
    while not stop.wait(interval):
        now = time.monotonic()
        if now - last > 2 * interval:  # the whole process was frozen (SIGSTOP, a suspended VM), not just the job
            ctx.alive_at = now
        last = now
        idle = ctx.stalled_for()
        if idle is not None:
            _give_up(ctx, idle)
            on_stall()
            return
        try:
            with ctx.session() as s:
                held = ctx.renew_lease(s)
        except Exception:  # a database hiccup: try again next beat
            log.warning("heartbeat for %s failed", ctx.job_id, exc_info=True)
            continue
        if not held:
            return


def record_success(ctx: JobContext, outcome: Outcome) -> bool:
    """Write the outcome's rows and mark the job succeeded in one lease-fenced transaction, then drop its
    checkpoint. If the lease was lost or the commit fails, nothing is written and the outcome's artifacts are
    removed. Returns whether the result was recorded."""
    try:
        with session_scope(ctx.settings.database_url) as s:
            for row in outcome.rows:
                s.add(row)
            if outcome.write is not None:
                outcome.write(s)
            recorded = jobs.finish_job(s, job_id=ctx.job_id, owner=ctx.owner, status="succeeded", result=outcome.result)
            if not recorded:
                s.rollback()
    except BaseException:
        _remove(ctx, outcome.artifacts)
        raise
    if not recorded:
        log.warning("job %s finished after losing its lease; result discarded", ctx.job_id)
        _remove(ctx, outcome.artifacts)
        return False
    ctx.store.remove_job(ctx.job_id)
    return True


def _remove(ctx: JobContext, artifacts: list[Path]) -> None:
    for path in artifacts:
        ctx.store.remove_tree(path)


def _end(ctx: JobContext, status: str, error: dict[str, str] | None = None) -> None:
    with session_scope(ctx.settings.database_url) as s:
        ended = jobs.finish_job(s, job_id=ctx.job_id, owner=ctx.owner, status=status, error=error)
    if ended:
        ctx.store.remove_job(ctx.job_id)  # a failed or cancelled job will not resume from its checkpoint


def _enqueue(settings: Settings, job_id: str, send: Send) -> None:
    with session_scope(settings.database_url) as s:
        enqueue(s, job_id=job_id, send=send)


def run_job(
    job_id: str,
    *,
    settings: Settings,
    send: Send,
    owner: str | None = None,
    shutdown: threading.Event = SHUTDOWN,
    on_stall: Callable[[], None] = lambda: None,
) -> str | None:
    """Run a job if it can be leased; ``send`` re-queues it on shutdown. Returns its final status, or None if it
    was not ours to run. Should the job stall (``settings.stall_seconds``), its lease is given up from the
    heartbeat thread, which then calls ``on_stall`` (the worker process exits there: its stuck thread cannot be
    stopped any other way)."""
    owner = owner or worker_identity()
    with session_scope(settings.database_url) as s:
        job = jobs.lease_job(s, job_id=job_id, owner=owner, lease_seconds=settings.lease_seconds)
    if job is None:
        log.info("job %s not leased (terminal or owned elsewhere)", job_id)
        return None
    ctx = JobContext(job, settings, owner, shutdown)
    CURRENT_JOB["id"] = job_id
    log_ids = logs.start(job_id=job_id, tenant_id=job.tenant_id)
    stop_beat = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(ctx, stop_beat, on_stall), daemon=True, name=f"heartbeat-{job_id}")
    beat.start()
    try:
        outcome = HANDLERS[job.kind](ctx)
        return "succeeded" if record_success(ctx, outcome) else None
    except TrainingStopped as stop:
        if stop.reason == "cancel":
            _end(ctx, "cancelled")
            return "cancelled"
        if stop.reason == "shutdown":
            with session_scope(settings.database_url) as s:
                released = jobs.release_job(s, job_id=job_id, owner=owner, reason="worker shutting down")
            if released:
                _enqueue(settings, job_id, send)
            return "queued"
        log.warning("job %s: lease lost to another worker; stopped without writing", job_id)
        return None
    except JobFailed as exc:
        _end(ctx, "failed", {"code": exc.code, "message": exc.message})
        return "failed"
    except UNAVAILABLE:  # not the job's fault: it keeps its lease, which expires, and the reaper runs it again
        log.warning("job %s stopped: database unavailable; it resumes once its lease expires", job_id, exc_info=True)
        return None
    except Exception as exc:  # any bug or resource error fails the job, not the worker
        log.exception("job %s failed", job_id)
        _end(ctx, "failed", {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"})
        return "failed"
    finally:
        stop_beat.set()
        ctx.close_trackers()
        CURRENT_JOB.pop("id", None)
        logs.end(log_ids)
