"""Live workers: each writes its row on start and on every heartbeat and removes it on a clean stop, so the
API can tell whether anything will run a queued job."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from api.core.models import Worker, utcnow


def beat(session: Session, *, worker_id: str, hostname: str, pid: int, queue: str, job_id: str | None) -> None:
    """Record that ``worker_id`` is alive (and which job it runs)."""
    now = utcnow()
    res = session.execute(update(Worker).where(Worker.id == worker_id).values(last_seen_at=now, job_id=job_id))
    if not res.rowcount:  # type: ignore[attr-defined]
        session.add(
            Worker(
                id=worker_id, hostname=hostname, pid=pid, queue=queue, started_at=now, last_seen_at=now, job_id=job_id
            )
        )


def remove(session: Session, *, worker_id: str) -> None:
    session.execute(delete(Worker).where(Worker.id == worker_id))


def count_alive(session: Session, *, within_seconds: float, queue: str) -> int:
    """Workers of ``queue`` heard from in the last ``within_seconds``."""
    since = utcnow() - timedelta(seconds=within_seconds)
    return int(session.scalar(select(func.count()).where(Worker.queue == queue, Worker.last_seen_at >= since)) or 0)


def prune(session: Session, *, older_than_seconds: float) -> int:
    """Forget workers silent for longer than ``older_than_seconds`` (killed without a clean stop)."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    return int(session.execute(delete(Worker).where(Worker.last_seen_at < cutoff)).rowcount)  # type: ignore[attr-defined]
