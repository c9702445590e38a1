"""Downloads of embed jobs' results: the structured ``.npy`` array the worker wrote, or the same rows as Parquet,
converted on the first request and kept (written to a temporary file and renamed)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from api.core.artifacts import ArtifactStore
from api.core.embeddings import FORMATS, PARQUET_EXTRA, npy_path, parquet_path, write_parquet
from api.core.models import Job
from api.core.problems import Problem, field_error
from api.services.lookup import get_owned
from ssl_core.export import write_atomically

MEDIA_TYPES = {"npy": "application/octet-stream", "parquet": "application/vnd.apache.parquet"}
_parquet_lock = threading.Lock()  # one conversion at a time per process (another process's rename is atomic too)


@dataclass(frozen=True)
class EmbeddingsFile:
    path: Path
    filename: str
    media_type: str


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise field_error("format", f"unknown format {format!r}; valid: {', '.join(FORMATS)}")


def embeddings_file(
    session: Session, *, tenant_id: str, job_id: str, format: str, store: ArtifactStore
) -> EmbeddingsFile:
    """The result of one of the tenant's succeeded embed jobs in ``format``. Raises ``Problem``: 404 for an unknown
    job, 422 naming ``job_id`` for another kind of job, 409 naming it for an embed job that has not succeeded, 422
    naming ``format`` for an unknown format or Parquet without pyarrow. Blocking: run it off the event loop."""
    check_format(format)
    job = _embed_job(session, tenant_id=tenant_id, job_id=job_id)
    source = npy_path(store, job.id)
    if not source.is_file():
        raise _gone(job.id)
    path = source if format == "npy" else _parquet(source, parquet_path(store, job.id))
    return EmbeddingsFile(path, f"{job.id}-embeddings.{format}", MEDIA_TYPES[format])


def delete_embeddings(session: Session, *, tenant_id: str, job_id: str, store: ArtifactStore) -> None:
    """Delete a succeeded embed job's result files (the job stays). Raises ``Problem`` as ``embeddings_file``
    does, and 404 once they are deleted."""
    job = _embed_job(session, tenant_id=tenant_id, job_id=job_id)
    session.rollback()  # ends the read: nothing is written
    if not npy_path(store, job.id).is_file():
        raise _gone(job.id)
    store.remove_embeddings(job.id)


def _gone(job_id: str) -> Problem:
    return Problem(404, "not_found", f"the embeddings of job {job_id} are no longer stored")


def _embed_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """One of the tenant's embed jobs that has succeeded, or the ``Problem`` ``embeddings_file`` documents."""
    job = get_owned(session, Job, "job", tenant_id=tenant_id, resource_id=job_id)
    if job.kind != "embed":
        raise Problem(
            422,
            "not_an_embed_job",
            f"job_id: job {job.id} is a {job.kind} job; embeddings come from embed jobs",
            errors=[{"field": "job_id", "reason": f"is a {job.kind} job, not an embed job"}],
        )
    if job.status != "succeeded":
        raise Problem(
            409,
            "job_not_succeeded",
            f"job_id: job {job.id} is {job.status}; its embeddings can be downloaded once it has succeeded",
            errors=[{"field": "job_id", "reason": f"is {job.status}, not succeeded"}],
        )
    return job


def _parquet(source: Path, path: Path) -> Path:
    with _parquet_lock:
        if not path.is_file():
            try:
                import pyarrow  # noqa: F401 - only to say what is missing before any work
            except ImportError:
                raise field_error(
                    "format",
                    f"parquet needs pyarrow, which this server lacks: install the {PARQUET_EXTRA!r} extra "
                    f"(pip install 'jaga[{PARQUET_EXTRA}]'), or download format npy",
                ) from None
            write_atomically(path, lambda tmp: write_parquet(source, tmp))
    return path
