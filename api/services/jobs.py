"""Submitting, reading and cancelling jobs."""

from __future__ import annotations

import hashlib
import json
from functools import partial
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.core import jobs
from api.core.models import Dataset, Job, JobEvent, Model
from api.core.problems import Problem, field_error
from api.core.queue import enqueue, send_job
from api.core.settings import Settings
from api.core.specs import IndexSpec, PretrainSpec, parse_job_spec, spec_to_json
from api.services.lookup import find_owned, get_owned, list_owned
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo

MAX_IDEMPOTENCY_KEY = 200


def _ready_dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    dataset = find_owned(session, Dataset, "dataset", tenant_id=tenant_id, resource_id=dataset_id)
    if dataset is None:
        raise field_error("dataset_id", f"no dataset {dataset_id!r}")
    if dataset.status != "ready":
        raise field_error(
            "dataset_id", f"dataset {dataset_id} is {dataset.status}, not ready", status=409, code="dataset_not_ready"
        )
    return dataset


def _check_references(session: Session, tenant_id: str, spec: PretrainSpec | IndexSpec) -> None:
    dataset = _ready_dataset(session, tenant_id, spec.dataset_id)
    if isinstance(spec, PretrainSpec) and dataset.num_images < 2:
        raise field_error("dataset_id", "pretraining needs a dataset of at least 2 images")
    if isinstance(spec, PretrainSpec):
        method = METHODS.get(spec.method)
        data = DataInfo(dataset.num_images, (dataset.image_shape or [3])[0])
        try:
            method.check_data(method.Params(**spec.params), data)
        except ValueError as exc:
            raise field_error("dataset_id", str(exc)) from None
    if (
        isinstance(spec, IndexSpec)
        and find_owned(session, Model, "model", tenant_id=tenant_id, resource_id=spec.model_id) is None
    ):
        raise field_error("model_id", f"no model {spec.model_id!r}")


def submit_job(
    session: Session, *, tenant_id: str, body: Any, idempotency_key: str | None, settings: Settings, celery: Celery
) -> tuple[Job, bool]:
    """Validate, commit, then enqueue. Returns (job, created); a repeated Idempotency-Key with the same
    body returns the original job with created=False."""
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise field_error("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    request_hash = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, tenant_id, idempotency_key, request_hash)
        if existing is not None:
            return existing, False
    spec = parse_job_spec(body)
    _check_references(session, tenant_id, spec)
    try:
        job = jobs.create_job(
            session,
            tenant_id=tenant_id,
            kind=spec.kind,
            spec=spec_to_json(spec),
            dataset_id=spec.dataset_id,
            max_attempts=settings.max_attempts,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
        session.commit()
    except IntegrityError:
        session.rollback()  # a concurrent request with the same key won the race
        assert idempotency_key is not None
        existing = _by_idempotency_key(session, tenant_id, idempotency_key, request_hash)
        if existing is None:
            raise
        return existing, False
    enqueue(session, job_id=job.id, send=partial(send_job, celery))
    return job, True


def _by_idempotency_key(session: Session, tenant_id: str, key: str, request_hash: str) -> Job | None:
    job = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if job is not None and job.request_hash != request_hash:
        raise Problem(
            422,
            "idempotency_key_reused",
            "Idempotency-Key: already used for a different request body",
            errors=[{"field": "Idempotency-Key", "reason": "already used for a different request body"}],
        )
    return job


def get_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    return get_owned(session, Job, "job", tenant_id=tenant_id, resource_id=job_id)


def list_jobs(
    session: Session,
    *,
    tenant_id: str,
    after: str | None,
    limit: int,
    status: jobs.Status | None = None,
    kind: jobs.Kind | None = None,
) -> dict[str, object]:
    return list_owned(session, Job, tenant_id=tenant_id, after=after, limit=limit, status=status, kind=kind)


def list_events(session: Session, *, tenant_id: str, job_id: str, after: int, limit: int) -> dict[str, object]:
    """The job's events with ids after ``after``, oldest first, as ``{"data", "has_more", "next_after"}``."""
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    rows = list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit + 1)
        )
    )
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {"data": rows, "has_more": has_more, "next_after": rows[-1].id if rows else after}


def cancel_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.status in jobs.TERMINAL:
        raise Problem(409, "job_finished", f"job {job_id} already ended {job.status}")
    job = jobs.request_cancel(session, job=job)
    session.commit()
    return job
