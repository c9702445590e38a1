"""Dataset uploads and deletion."""

from __future__ import annotations

import os
import shutil
import uuid
from functools import partial
from pathlib import Path
from typing import BinaryIO

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.core import jobs
from api.core.artifacts import ArtifactStore
from api.core.auth import lock_tenant
from api.core.ids import new_id
from api.core.ingest import Limits, inspect_upload
from api.core.models import Dataset, Job, Tenant
from api.core.problems import Problem, field_error
from api.core.queue import enqueue, send_job
from api.core.settings import Settings
from api.core.specs import IngestSpec, spec_to_json
from api.services import quotas
from api.services.lookup import get_owned, list_owned

COPY_CHUNK = 1 << 20


def _too_large(limit: int) -> Problem:
    return Problem(
        413,
        "upload_too_large",
        f"file: larger than the limit of {limit} bytes",
        errors=[{"field": "file", "reason": f"larger than {limit} bytes"}],
    )


def stage_upload(source: BinaryIO, store: ArtifactStore, limit: int) -> tuple[Path, int]:
    """Copy the upload into the staging area, refusing it once it passes ``limit`` bytes."""
    path = store.staging_dir() / uuid.uuid4().hex
    size = 0
    try:
        with open(path, "wb") as out:
            while chunk := source.read(COPY_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise field_error("file", "is empty")
    return path, size


def _size_left(source: BinaryIO) -> int | None:
    """The bytes left to read from ``source`` when it can say without reading (an upload spooled to a file)."""
    if not source.seekable():
        return None
    start = source.tell()
    end = source.seek(0, os.SEEK_END)
    source.seek(start)
    return end - start


def _check_quotas(
    session: Session, *, tenant_id: str, settings: Settings, adding: int | None, lock: bool = False
) -> None:
    """Refuse an upload over the tenant's quota on active jobs (it adds an ingest job) or, when its size is known,
    on stored bytes. Without ``lock``, a cheap early check that ends its read-only transaction."""
    tenant = lock_tenant(session, tenant_id) if lock else session.get(Tenant, tenant_id)
    assert tenant is not None  # the caller's key belongs to it
    try:
        quotas.check_active_jobs(session, tenant=tenant, settings=settings)
        if adding is not None:
            quotas.check_stored_bytes(session, tenant=tenant, settings=settings, adding=adding)
    finally:
        if not lock:
            session.rollback()


def refuse_upload_early(make_session: sessionmaker[Session], *, tenant_id: str, settings: Settings) -> None:
    """Before an upload's body is read: refuse it if the tenant has no active job or no stored byte to spare (an
    upload adds an ingest job and at least one byte)."""
    with make_session() as session:
        _check_quotas(session, tenant_id=tenant_id, settings=settings, adding=1)


def create_dataset(
    session: Session,
    *,
    tenant_id: str,
    name: str,
    filename: str,
    source: BinaryIO,
    settings: Settings,
    store: ArtifactStore,
    celery: Celery,
) -> Dataset:
    """Check the upload and the tenant's quotas, store the upload, and queue its ingest job. On any failure
    nothing is left behind."""
    name = name.strip()
    if not name or len(name) > 200:
        raise field_error("name", "must be 1 to 200 characters")
    if "\x00" in name:  # PostgreSQL cannot store it
        raise field_error("name", "must not contain NUL characters")
    _check_quotas(session, tenant_id=tenant_id, settings=settings, adding=_size_left(source))
    staged, size = stage_upload(source, store, settings.max_upload_bytes)
    final: Path | None = None
    try:
        info = inspect_upload(staged, Limits.from_settings(settings))
        # Again, now with the size staged, in the transaction that writes the dataset, under the tenant's lock.
        _check_quotas(session, tenant_id=tenant_id, settings=settings, adding=size, lock=True)
        dataset_id = new_id("dataset")
        final = store.upload_path(dataset_id, f".{info.format}")
        os.replace(staged, final)
        spec = IngestSpec(
            kind="ingest", dataset_id=dataset_id, source_format=info.format, max_side=settings.stored_max_side
        )
        job = jobs.create_job(
            session,
            tenant_id=tenant_id,
            kind="ingest",
            spec=spec_to_json(spec),
            dataset_id=dataset_id,
            max_attempts=settings.max_attempts,
        )
        dataset = Dataset(
            id=dataset_id,
            tenant_id=tenant_id,
            name=name,
            status="ingesting",
            source_format=info.format,
            source_filename=filename.replace("\x00", "")[:300],  # shown back only; PostgreSQL cannot store a NUL
            source_bytes=size,
            ingest_job_id=job.id,
        )
        session.add(dataset)
        session.commit()
    except BaseException:
        session.rollback()
        staged.unlink(missing_ok=True)
        if final is not None:
            shutil.rmtree(final.parent, ignore_errors=True)
        raise
    enqueue(session, job_id=job.id, send=partial(send_job, celery))
    return dataset


def list_datasets(session: Session, *, tenant_id: str, after: str | None, limit: int) -> dict[str, object]:
    return list_owned(session, Dataset, tenant_id=tenant_id, after=after, limit=limit)


def get_dataset(session: Session, *, tenant_id: str, dataset_id: str) -> Dataset:
    return get_owned(session, Dataset, "dataset", tenant_id=tenant_id, resource_id=dataset_id)


def delete_dataset(session: Session, *, tenant_id: str, dataset_id: str, store: ArtifactStore) -> None:
    dataset = get_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id)
    lock_tenant(session, tenant_id)  # as submissions do: none can start using the dataset until this commits
    active = list(session.scalars(select(Job.id).where(Job.dataset_id == dataset.id, Job.status.in_(jobs.ACTIVE))))
    if active:
        session.rollback()  # releases the tenant's lock
        raise Problem(
            409,
            "dataset_in_use",
            f"dataset {dataset_id} is used by active jobs ({', '.join(active)}); cancel them first",
        )
    session.delete(dataset)
    session.commit()
    store.remove_dataset(dataset.id)
