"""The Celery application that sends jobs (API) and runs them (worker); messages carry only a job id, and
tasks are addressed by name so the API never imports worker code."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery
from kombu.exceptions import ChannelError
from sqlalchemy.orm import Session

from api.core import jobs
from api.core.settings import Settings

RUN_JOB_TASK = "jaga.run_job"
#: Sends a job id to the workers; False when the broker could not take it.
Send = Callable[[str], bool]
log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
    app = Celery("jaga", broker=settings.broker_url)
    conf: dict[str, object] = {
        "task_default_queue": settings.queue_name,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if settings.broker_url.startswith("filesystem"):
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),  # kombu's default is ./control in the cwd
        }
    else:
        conf["broker_transport_options"] = {"visibility_timeout": 3600 * 24}
    app.conf.update(conf)
    return app


def queue_depth(app: Celery, queue: str) -> int:
    """Messages waiting in ``queue`` (not those a worker holds). Raises when the broker is unreachable."""
    with app.connection_for_read() as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:  # no such queue: an empty Redis list does not exist, nor does a lost one
            return 0


def send_job(app: Celery, job_id: str) -> bool:
    """Send a job id to the workers. Returns False (and logs) when the broker is unreachable; the worker's
    sweeper sends such jobs later, since the row is already committed."""
    try:
        app.send_task(RUN_JOB_TASK, args=[job_id], retry=False)
        return True
    except Exception:  # any broker failure: the sweeper will resend
        log.warning("could not enqueue job %s; it will be sent by the sweeper", job_id, exc_info=True)
        return False


def enqueue(session: Session, *, job_id: str, send: Send) -> bool:
    """Send a committed job's id, then record that it was sent (committing ``session``). Returns whether it
    was sent; a job never marked sent stays queued, and the worker's sweeper sends it later."""
    if not send(job_id):
        return False
    jobs.mark_enqueued(session, job_id=job_id)
    session.commit()
    return True
