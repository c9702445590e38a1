"""The Celery worker: one thin task handing a job id to ``worker.runner.run_job``; ``jaga worker`` runs one
job at a time (``--pool=solo -c 1``, prefetch 1). The worker registers itself in the database and beats while
it runs; the sweeper that reaps expired leases runs in the API process, which outlives any one worker."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import threading
from functools import partial

from celery.exceptions import Reject
from celery.signals import setup_logging, worker_ready, worker_shutting_down

from api import logs
from api.core import workers
from api.core.db import session_scope
from api.core.queue import RUN_JOB_TASK, make_celery, send_job
from api.core.settings import get_settings
from ssl_core.device import resolve_device
from ssl_core.precision import bf16_pays
from worker import runner

log = logging.getLogger(__name__)
#: The worker's exit status when it gives up a stalled job (EX_SOFTWARE).
STALLED_EXIT = 70


def _die_with_parent() -> None:
    """Under ``jaga serve`` (which sets ``JAGA_PARENT_PID``): get SIGTERM when it dies, even by SIGKILL, so no
    orphaned worker keeps consuming its data directory after it is restarted."""
    parent = os.environ.get("JAGA_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


_die_with_parent()
settings = get_settings()
app = make_celery(settings)
send = partial(send_job, app)
WORKER_ID = runner.worker_identity()
# The precision probe's result is kept beside the worker's other state (ssl_core.precision reads this).
os.environ.setdefault("JAGA_PRECISION_CACHE", str(settings.data_dir / "precision-probe.json"))


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job_task(job_id: str) -> str | None:
    if runner.SHUTDOWN.is_set():  # a message taken while stopping goes back for the next worker
        raise Reject("worker shutting down", requeue=True)
    return runner.run_job(job_id, settings=settings, send=send, on_stall=_exit_stalled)


def _exit_stalled() -> None:
    """A job's thread is stuck (a deadlock in native code, a hung read): nothing but the process's end frees the
    worker, and ``jaga serve``'s supervisor, Compose or the operator's process manager starts it again."""
    logging.shutdown()
    os._exit(STALLED_EXIT)


def _beat() -> None:
    with session_scope(settings.database_url) as s:
        workers.beat(
            s,
            worker_id=WORKER_ID,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queue=settings.queue_name,
            job_id=runner.CURRENT_JOB.get("id"),
        )


def _heartbeat(stop: threading.Event) -> None:
    while True:
        try:
            _beat()
        except Exception:  # a database outage: the next beat retries
            log.warning("worker heartbeat failed", exc_info=True)
        if stop.wait(settings.heartbeat_seconds):
            return


_stop_heartbeat = threading.Event()


@setup_logging.connect
def _logging(**_: object) -> None:  # connected: Celery leaves logging to us
    logs.configure(settings.log_format)


def _probe_precision() -> None:
    """Measure bf16 against float32 now, where the hardware leaves it in doubt, so no job waits for the probe."""
    try:
        pays, why = bf16_pays(resolve_device(settings.device))
        log.info("precision auto: %s (%s)", "bf16" if pays else "float32", why)
    except Exception:  # jobs measure again when they start
        log.warning("precision probe failed", exc_info=True)


@worker_ready.connect
def _on_ready(**_: object) -> None:
    threading.Thread(target=_heartbeat, args=(_stop_heartbeat,), daemon=True, name="jaga-worker-heartbeat").start()
    _probe_precision()
    log.info(
        "jaga worker %s ready: database %s, broker %s",
        WORKER_ID,
        settings.database_url.split("@")[-1],
        settings.broker_url.split("@")[-1],
    )


@worker_shutting_down.connect
def _on_shutdown(**_: object) -> None:
    runner.SHUTDOWN.set()
    _stop_heartbeat.set()
    try:
        with session_scope(settings.database_url) as s:
            workers.remove(s, worker_id=WORKER_ID)
    except Exception:  # the row ages out and the sweeper prunes it
        log.warning("could not unregister worker %s", WORKER_ID, exc_info=True)
