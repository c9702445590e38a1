"""The Celery worker: one thin task handing a job id to ``worker.runner.run_job``; ``jaga worker`` runs one
job at a time (``--pool=solo -c 1``, prefetch 1)."""

from __future__ import annotations

import logging
import threading
from functools import partial

from celery.signals import worker_ready, worker_shutting_down

from api.core.queue import RUN_JOB_TASK, make_celery, send_job
from api.core.settings import get_settings
from worker import runner

log = logging.getLogger(__name__)
settings = get_settings()
app = make_celery(settings)
send = partial(send_job, app)


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job_task(job_id: str) -> str | None:
    return runner.run_job(job_id, settings=settings, send=send)


def _sweeper(stop: threading.Event) -> None:
    while not stop.wait(settings.reaper_interval_seconds):
        try:
            runner.sweep(settings, send)
        except Exception:  # keep sweeping; a database outage is logged and retried
            log.warning("sweep failed", exc_info=True)


_stop_sweeper = threading.Event()


@worker_ready.connect
def _on_ready(**_: object) -> None:
    threading.Thread(target=_sweeper, args=(_stop_sweeper,), daemon=True, name="jaga-sweeper").start()
    log.info(
        "jaga worker ready: database %s, broker %s",
        settings.database_url.split("@")[-1],
        settings.broker_url.split("@")[-1],
    )


@worker_shutting_down.connect
def _on_shutdown(**_: object) -> None:
    runner.SHUTDOWN.set()
    _stop_sweeper.set()
