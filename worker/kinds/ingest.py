"""Ingest: decode an uploaded archive once into the dataset's uint8 array store, written image by image into
the dataset's staging directory and renamed into place whole (an interrupted ingest leaves no dataset)."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from api.core.ingest import Limits, class_counts, decode_upload
from api.core.models import Dataset, Job
from api.core.problems import Problem
from api.core.specs import IngestSpec, spec_from_json
from ssl_core.data import staging_dir
from worker.context import JobContext, JobFailed, Outcome


def _dataset_ready(session: Session, *, job_id: str, values: dict[str, Any]) -> None:
    session.execute(update(Dataset).where(Dataset.ingest_job_id == job_id).values(status="ready", error=None, **values))


def _keep_rejected(session: Session, *, job_id: str, owner: str, rejected: list[dict[str, str]], count: int) -> None:
    """Record the rejected files on a dataset about to fail, so it still says why each file was refused; only
    while this worker holds the job's lease."""
    leased = exists(select(Job.id).where(Job.id == job_id, Job.lease_owner == owner))
    session.execute(
        update(Dataset)
        .where(Dataset.ingest_job_id == job_id, Dataset.status == "ingesting", leased)
        .values(rejected=rejected, num_rejected=count)
    )


def _decoding(ctx: JobContext, fraction: float) -> None:
    """Before each image: stop when asked to (cancel, shutdown, lease lost), and show progress (to 0.9)."""
    ctx.raise_if_stopped()
    ctx.update(force=False, progress=round(0.9 * fraction, 4))


def run_ingest(ctx: JobContext) -> Outcome:
    spec = spec_from_json(ctx.job.spec)
    assert isinstance(spec, IngestSpec)
    ctx.update(phase="ingesting")
    source = ctx.store.upload_path(spec.dataset_id, f".{spec.source_format}")
    if not source.exists():
        raise JobFailed("upload_missing", "the uploaded file is gone (was the dataset deleted?)")
    limits = replace(Limits.from_settings(ctx.settings), stored_max_side=spec.max_side)
    target = ctx.store.dataset_dir(spec.dataset_id)
    for leftover in target.parent.glob(f"{target.name}.tmp*"):  # of interrupted ingests and saves
        shutil.rmtree(leftover, ignore_errors=True)
    # Its own directory: a run that lost its lease and goes on fails at its rename, never mixes files with this.
    staging = staging_dir(target, uuid.uuid4().hex[:12])
    staging.mkdir(parents=True)
    try:
        return _decode_and_save(ctx, spec, source, limits, target, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # renamed away on success; half-written otherwise


def _decode_and_save(
    ctx: JobContext, spec: IngestSpec, source: Path, limits: Limits, target: Path, staging: Path
) -> Outcome:
    try:
        decoded = decode_upload(source, spec.source_format, limits, staging / "images.npy", partial(_decoding, ctx))
    except Problem as problem:  # the upload as a whole crossed a limit or is corrupt
        raise JobFailed(problem.code, problem.detail) from None
    data = decoded.data
    if len(data) == 0:
        ctx.with_session(
            partial(
                _keep_rejected,
                job_id=ctx.job_id,
                owner=ctx.owner,
                rejected=decoded.rejected,
                count=decoded.num_rejected,
            )
        )
        reasons = "; ".join(f"{r['file']}: {r['reason']}" for r in decoded.rejected[:5])
        raise JobFailed(
            "no_images",
            f"no decodable images in the upload ({decoded.num_rejected} rejected"
            + (f": {reasons}" if reasons else "")
            + ")",
        )
    ctx.update(phase="saving", progress=0.9)
    data.save(target, staging)
    classes = class_counts(data)
    num_labelled = len(data.labelled)
    return Outcome(
        result={"dataset_id": spec.dataset_id, "num_images": len(data), "num_rejected": decoded.num_rejected},
        write=partial(
            _dataset_ready,
            job_id=ctx.job_id,
            values={
                "num_images": len(data),
                "image_shape": list(data.images.shape[1:]),
                "classes": classes,
                "num_labelled": num_labelled,
                "rejected": decoded.rejected,
                "num_rejected": decoded.num_rejected,
            },
        ),
    )
