"""Job state transitions: queued → running → succeeded | failed | cancelled (``cancelling`` while a running job
stops). The row is the truth; worker writes are fenced by the lease, and each transition is a conditional
UPDATE that only matches the states it may leave."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, Update, func, or_, select, update
from sqlalchemy.orm import Session

from api.core.ids import new_id
from api.core.models import Dataset, Job, JobEvent, utcnow
from api.core.outbox import add_deliveries
from api.core.specs import MODEL_REFERENCES

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running", "cancelling")
Status = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
Kind = Literal["ingest", "pretrain", "distill", "index", "evaluate", "embed"]
STATUSES: tuple[Status, ...] = get_args(Status)
KINDS: tuple[Kind, ...] = get_args(Kind)


def reads_model(model_id: str) -> ColumnElement[bool]:
    """Jobs whose spec names ``model_id`` in any of ``MODEL_REFERENCES``."""
    return or_(*(Job.spec[field].as_string() == model_id for field in MODEL_REFERENCES))


def add_event(session: Session, *, job_id: str, type: str, data: dict[str, Any]) -> None:
    """Append to the job's event log. Terminal state and metrics events also become webhook deliveries to the
    tenant's subscribed endpoints, in this same transaction (``api.core.outbox``)."""
    session.add(JobEvent(job_id=job_id, type=type, data=data))
    add_deliveries(session, job_id=job_id, type=type, data=data)


def create_job(
    session: Session,
    *,
    tenant_id: str,
    kind: str,
    spec: dict[str, Any],
    dataset_id: str | None,
    max_attempts: int,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> Job:
    """Add a queued job and its first event. The caller commits, then enqueues the id."""
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        kind=kind,
        spec=spec,
        dataset_id=dataset_id,
        status="queued",
        phase="queued",
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    session.add(job)
    session.flush()
    add_event(session, job_id=job.id, type="state", data={"status": "queued"})
    return job


def mark_enqueued(session: Session, *, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


def request_cancel(session: Session, *, job: Job) -> Job:
    """Cancel a queued job at once; ask a running one to stop. Terminal jobs are returned unchanged."""
    now = utcnow()
    if job.status == "queued":
        res = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "queued")
            .values(status="cancelled", phase="cancelled", finished_at=now, lease_owner=None, lease_expires_at=None)
        )
        if res.rowcount:  # type: ignore[attr-defined]
            add_event(session, job_id=job.id, type="state", data={"status": "cancelled"})
            _fail_dependents(session, job_id=job.id, kind=job.kind, status="cancelled", error=None)
    elif job.status == "running":
        res = session.execute(update(Job).where(Job.id == job.id, Job.status == "running").values(status="cancelling"))
        if res.rowcount:  # type: ignore[attr-defined]
            add_event(session, job_id=job.id, type="state", data={"status": "cancelling"})
    session.flush()
    session.refresh(job)
    return job


def lease_job(session: Session, *, job_id: str, owner: str, lease_seconds: float) -> Job | None:
    """Take the lease on a queued job (or one whose lease expired). Returns the job, or None when it is
    terminal, cancelled while queued, or leased by someone else."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", (Job.lease_owner.is_(None)) | (Job.lease_expires_at < now))
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempt=Job.attempt + 1,
            started_at=func.coalesce(Job.started_at, now),
            error=None,
        )
    )
    if not res.rowcount:  # type: ignore[attr-defined]
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    add_event(session, job_id=job_id, type="state", data={"status": "running", "attempt": job.attempt, "worker": owner})
    return job


def _fenced(job_id: str, owner: str) -> Update:
    return update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status.in_(("running", "cancelling")))


def renew_lease(session: Session, *, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Heartbeat. False means the lease was lost (reaped, or the job ended) and the worker must stop."""
    res = session.execute(_fenced(job_id, owner).values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)))
    return bool(res.rowcount)  # type: ignore[attr-defined]


def give_up_lease(session: Session, *, job_id: str, owner: str, warning: dict[str, Any]) -> bool:
    """Give up a worker's own lease, with ``warning`` in the job's events: owned by no one from now, so nothing
    the worker writes later lands, and expired, so the reaper's next pass re-queues the job (or fails it, out of
    attempts) as if the worker had died. False when the lease was not its own."""
    res = session.execute(_fenced(job_id, owner).values(lease_owner=None, lease_expires_at=utcnow()))
    if not res.rowcount:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id=job_id, type="warning", data=warning)
    return True


def update_job(session: Session, *, job_id: str, owner: str, **values: Any) -> bool:
    """Fenced update of progress fields (phase, progress, epoch, step, loss, eta_seconds, metrics)."""
    res = session.execute(_fenced(job_id, owner).values(**values))
    return bool(res.rowcount)  # type: ignore[attr-defined]


def _fail_dependents(session: Session, *, job_id: str, kind: str, status: str, error: dict[str, Any] | None) -> None:
    """An ingest job that does not succeed leaves its dataset ``failed``, with the reason."""
    if kind == "ingest" and status != "succeeded":
        reason = error or {"code": status, "message": f"ingestion {status}"}
        session.execute(
            update(Dataset)
            .where(Dataset.ingest_job_id == job_id, Dataset.status == "ingesting")
            .values(status="failed", error=reason)
        )


def finish_job(
    session: Session,
    *,
    job_id: str,
    owner: str,
    status: str,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Move a leased job to a terminal state. False when the lease was lost first (nothing is written)."""
    assert status in TERMINAL
    values: dict[str, Any] = {
        "status": status,
        "phase": status,
        "finished_at": utcnow(),
        "lease_owner": None,
        "lease_expires_at": None,
        "eta_seconds": None,
    }
    if status == "succeeded":
        values["progress"] = 1.0
    if result is not None:
        values["result"] = result
    if error is not None:
        values["error"] = error
    if not session.execute(_fenced(job_id, owner).values(**values)).rowcount:  # type: ignore[attr-defined]
        return False
    data: dict[str, Any] = {"status": status}
    if error:
        data["error"] = error
    add_event(session, job_id=job_id, type="state", data=data)
    kind = session.scalar(select(Job.kind).where(Job.id == job_id))
    _fail_dependents(session, job_id=job_id, kind=kind or "", status=status, error=error)
    return True


def release_job(session: Session, *, job_id: str, owner: str, reason: str) -> bool:
    """Give a running job back to the queue (worker shutdown); a cancelling one ends cancelled."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.lease_owner != owner:
        return False
    if job.status == "cancelling":
        return finish_job(session, job_id=job_id, owner=owner, status="cancelled")
    res = session.execute(
        _fenced(job_id, owner).values(
            status="queued", phase="queued", lease_owner=None, lease_expires_at=None, enqueued_at=None
        )
    )
    if res.rowcount:  # type: ignore[attr-defined]
        add_event(session, job_id=job_id, type="state", data={"status": "queued", "reason": reason})
    return bool(res.rowcount)  # type: ignore[attr-defined]


def reap_expired(session: Session, *, now: datetime | None = None) -> list[str]:
    """Handle jobs whose lease expired: re-queue them (they resume from their checkpoint), or end them
    when cancelling or out of attempts. Returns the ids to enqueue again (after the caller commits)."""
    now = now or utcnow()
    expired = session.scalars(
        select(Job).where(Job.status.in_(("running", "cancelling")), Job.lease_expires_at < now)
    ).all()
    requeue = []
    for job in expired:
        cond = update(Job).where(Job.id == job.id, Job.status == job.status, Job.lease_owner == job.lease_owner)
        if job.status == "cancelling":
            values: dict[str, Any] = {"status": "cancelled", "phase": "cancelled", "finished_at": now}
            data: dict[str, Any] = {"status": "cancelled", "reason": "worker lost while cancelling"}
        elif job.attempt >= job.max_attempts:
            error = {
                "code": "lease_expired",
                "message": f"the worker running this job stopped responding {job.attempt} times "
                f"(max_attempts={job.max_attempts})",
            }
            values = {"status": "failed", "phase": "failed", "finished_at": now, "error": error}
            data = {"status": "failed", "error": error}
        else:
            values = {"status": "queued", "phase": "queued", "enqueued_at": None}
            data = {"status": "queued", "reason": "lease expired; resuming from the last checkpoint"}
        values.update(lease_owner=None, lease_expires_at=None)
        if session.execute(cond.values(**values)).rowcount:  # type: ignore[attr-defined]
            add_event(session, job_id=job.id, type="state", data=data)
            _fail_dependents(session, job_id=job.id, kind=job.kind, status=values["status"], error=values.get("error"))
            if values["status"] == "queued":
                requeue.append(job.id)
    return requeue


def unsent_jobs(session: Session, *, older_than_seconds: float) -> list[str]:
    """Queued jobs whose message was never sent (e.g. the broker was down at submission)."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    return list(
        session.scalars(
            select(Job.id).where(Job.status == "queued", Job.enqueued_at.is_(None), Job.created_at < cutoff)
        )
    )


def waiting_jobs(session: Session, *, sent_before_seconds: float) -> list[str]:
    """Queued jobs whose message was sent more than ``sent_before_seconds`` ago and not taken yet, oldest first."""
    cutoff = utcnow() - timedelta(seconds=sent_before_seconds)
    return list(
        session.scalars(
            select(Job.id).where(Job.status == "queued", Job.enqueued_at < cutoff).order_by(Job.enqueued_at)
        )
    )
