"""Send committed jobs to the broker and record that they were sent."""

from __future__ import annotations

from celery import Celery
from sqlalchemy.orm import Session

from api.core import jobs
from api.core.queue import send_job


def enqueue_committed(session: Session, celery: Celery, job_id: str) -> None:
    """Call only after the job row is committed. A broker failure leaves the job queued and unsent; the
    worker's sweeper sends it later."""
    if send_job(celery, job_id):
        jobs.mark_enqueued(session, job_id=job_id)
        session.commit()
