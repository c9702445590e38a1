"""Submitting, reading and cancelling jobs."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import cache, partial
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import TypeAdapter
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.core import jobs
from api.core.auth import lock_tenant
from api.core.ids import looks_like
from api.core.models import Dataset, Job, JobEvent, Model
from api.core.problems import Problem, field_error, invalid, not_found
from api.core.queue import enqueue, send_job
from api.core.settings import Settings
from api.core.specs import (
    MODEL_REFERENCES,
    DistillSpec,
    EmbedSpec,
    EvaluateSpec,
    IndexSpec,
    PretrainSpec,
    SubmittableSpec,
    parse_job_spec,
    patch_errors,
    spec_to_json,
)
from api.schemas import JobOut, Page
from api.services import quotas
from api.services.lookup import find_owned, get_owned, list_owned
from ssl_core.backbones import BACKBONES, default_patch_size
from ssl_core.finetune import stage_count
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo
from ssl_core.splits import SplitError

MAX_IDEMPOTENCY_KEY = 200
_JOB_PAGE: TypeAdapter[Page[JobOut]] = TypeAdapter(Page[JobOut])
#: How many names a refusal lists before "…".
LISTED_NAMES = 20


def _ready_dataset(session: Session, tenant_id: str, dataset_id: str, field: str = "dataset_id") -> Dataset:
    dataset = find_owned(session, Dataset, "dataset", tenant_id=tenant_id, resource_id=dataset_id)
    if dataset is None:
        raise field_error(field, f"no dataset {dataset_id!r}")
    if dataset.status != "ready":
        raise field_error(
            field, f"dataset {dataset_id} is {dataset.status}, not ready", status=409, code="dataset_not_ready"
        )
    return dataset


def _owned_model(session: Session, tenant_id: str, model_id: str, field: str = "model_id") -> Model:
    model = find_owned(session, Model, "model", tenant_id=tenant_id, resource_id=model_id)
    if model is None:
        raise field_error(field, f"no model {model_id!r}")
    return model


def _model_channels(session: Session, model: Model) -> int | None:
    """The channels a model's images are fitted to: recorded since lineage was, else its dataset's."""
    if model.channels is not None:
        return model.channels
    dataset = session.get(Dataset, model.dataset_id)
    return None if dataset is None or not dataset.image_shape else int(dataset.image_shape[0])


def _check_channels(session: Session, model: Model, dataset: Dataset, field: str) -> None:
    channels, data_channels = _model_channels(session, model), (dataset.image_shape or [3])[0]
    if channels is not None and channels != data_channels:
        raise field_error(
            "dataset_id",
            f"its images have {data_channels} channels; {field} {model.id} takes {channels}-channel images",
        )


def _model_patch_size(model: Model) -> int | None:
    """A ViT's patch side as trained (its spec's, else the default for its image size); None for other backbones."""
    if BACKBONES.get(model.backbone).family != "vit":
        return None
    patch = model.config.get("patch_size")
    return int(patch) if patch is not None else default_patch_size(model.image_size)


def _check_continuation(session: Session, tenant_id: str, spec: PretrainSpec, dataset: Dataset) -> None:
    """A pretrain spec with ``init_model_id``: the architecture settings it leaves out are the model's, those it
    gives must be the model's, and the model must take the dataset's channels."""
    assert spec.init_model_id is not None
    model = _owned_model(session, tenant_id, spec.init_model_id, field="init_model_id")
    given = spec.model_fields_set
    fixed = {"backbone": model.backbone, "stem": model.stem, "patch_size": _model_patch_size(model)}
    if BACKBONES.get(model.backbone).family == "vit":
        fixed["image_size"] = model.image_size  # its position embeddings are sized for it
    for name, value in fixed.items():
        if name in given and getattr(spec, name) != value:
            raise field_error(
                "init_model_id", f"model {model.id} has {name} {value}; this spec asks for {getattr(spec, name)}"
            )
        setattr(spec, name, value)
    if "image_size" not in given:
        spec.image_size = model.image_size
    method = METHODS.get(spec.method)
    if BACKBONES.get(spec.backbone).family not in method.families:
        raise field_error(
            "init_model_id", f"model {model.id} is a {spec.backbone}, which {spec.method} does not support"
        )
    if errors := patch_errors(spec):
        raise invalid(errors)
    _check_channels(session, model, dataset, "init_model_id")


def _check_distillation(session: Session, tenant_id: str, spec: DistillSpec, dataset: Dataset) -> None:
    """The teacher exists and takes the dataset's channels; ``logits`` needs a classifier teacher and labelled
    images of its classes; stem and image size default to the teacher's, and the image size must be its."""
    teacher = _owned_model(session, tenant_id, spec.teacher_model_id, field="teacher_model_id")
    if spec.image_size is not None and spec.image_size != teacher.image_size:
        raise field_error("image_size", f"must be the teacher's ({teacher.image_size}), which sees the same images")
    spec.image_size = teacher.image_size
    if spec.stem is None:
        spec.stem = "small" if teacher.stem == "small" else "standard"
    if errors := patch_errors(spec):
        raise invalid(errors)
    _check_channels(session, teacher, dataset, "teacher_model_id")
    if spec.objective == "logits":
        if teacher.type != "classifier" or not teacher.classes:
            raise field_error(
                "teacher_model_id",
                f"model {teacher.id} is an encoder; objective logits needs a classifier teacher "
                "(an evaluate job with protocol linear or finetune makes one)",
            )
        if not set(teacher.classes) & set(_labelled_classes(dataset)):
            raise field_error(
                "dataset_id",
                f"objective logits needs labelled images of the teacher's classes ({_names(list(teacher.classes))}); "
                f"dataset {dataset.id} has none",
            )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:LISTED_NAMES])
    return shown + (", …" if len(names) > LISTED_NAMES else "")


def _labelled_classes(dataset: Dataset) -> list[str]:
    return [c["name"] for c in dataset.classes if c["count"] > 0]


@cache
def _stage_count(backbone: str) -> int:  # builds the backbone: once per name
    return stage_count(backbone)


def _check_evaluation(session: Session, tenant_id: str, spec: EvaluateSpec, dataset: Dataset) -> None:
    """Refuse, naming the field, an evaluation the worker could only fail: too few labels for the splits, a test
    dataset that does not match, a missing model, more fine-tuning stages than the backbone has."""
    if len(_labelled_classes(dataset)) < 2:
        raise field_error("dataset_id", "evaluation needs a dataset with labelled images of at least 2 classes")
    plan = spec.split_plan()
    try:
        counts = plan.counts([c["count"] for c in dataset.classes], [c["name"] for c in dataset.classes])
    except SplitError as err:
        raise field_error(err.field, err.reason) from None
    if spec.test_dataset_id is None and not any(c.test for c in counts):
        raise field_error("test_fraction", "leaves no test image (no class has 2 images); give test_dataset_id")
    if spec.test_dataset_id is not None:
        _check_test_dataset(session, tenant_id, spec.test_dataset_id, dataset)
    if spec.model_id is not None:
        model = _owned_model(session, tenant_id, spec.model_id)
        if spec.protocol == "finetune" and spec.strategy == "partial":
            stages = _stage_count(model.backbone)
            if spec.trainable_blocks > stages:
                raise field_error("trainable_blocks", f"at most {stages}: {model.backbone} has {stages} stages")


def _check_test_dataset(session: Session, tenant_id: str, test_dataset_id: str, dataset: Dataset) -> None:
    if test_dataset_id == dataset.id:
        raise field_error("test_dataset_id", "must differ from dataset_id (to test on part of it, use test_fraction)")
    test = _ready_dataset(session, tenant_id, test_dataset_id, field="test_dataset_id")
    if test.num_labelled < 1 or not _labelled_classes(test):
        raise field_error("test_dataset_id", f"dataset {test.id} has no labelled images to test on")
    channels, test_channels = (dataset.image_shape or [3])[0], (test.image_shape or [3])[0]
    if channels != test_channels:
        raise field_error("test_dataset_id", f"its images have {test_channels} channels, dataset_id's have {channels}")
    known = [c["name"] for c in dataset.classes]
    unknown = sorted({c["name"] for c in test.classes} - set(known))
    if unknown:
        raise field_error(
            "test_dataset_id",
            f"its classes {_names(unknown)} are not among dataset_id's; a test dataset may only use {_names(known)}",
        )


def _check_references(session: Session, tenant_id: str, spec: SubmittableSpec) -> None:
    dataset = _ready_dataset(session, tenant_id, spec.dataset_id)
    if isinstance(spec, PretrainSpec | DistillSpec) and dataset.num_images < 2:
        raise field_error("dataset_id", f"{spec.kind} needs a dataset of at least 2 images")
    if isinstance(spec, PretrainSpec) and spec.init_model_id is not None:
        _check_continuation(session, tenant_id, spec, dataset)
    if isinstance(spec, DistillSpec):
        _check_distillation(session, tenant_id, spec, dataset)
    if isinstance(spec, PretrainSpec):
        method = METHODS.get(spec.method)
        data = DataInfo(dataset.num_images, (dataset.image_shape or [3])[0])
        try:
            method.check_data(method.Params(**spec.params), data)
        except ValueError as exc:
            raise field_error("dataset_id", str(exc)) from None
    if isinstance(spec, IndexSpec):
        _owned_model(session, tenant_id, spec.model_id)
    if isinstance(spec, EmbedSpec):
        _check_channels(session, _owned_model(session, tenant_id, spec.model_id), dataset, "model_id")
    if isinstance(spec, EvaluateSpec):
        _check_evaluation(session, tenant_id, spec, dataset)


def _check_still_there(session: Session, tenant_id: str, spec: SubmittableSpec) -> None:
    """Under the tenant's lock, which deletions of datasets and models take too: the dataset and models the spec
    names were not deleted since ``_check_references`` read them (read afresh, past the session's identity map)."""
    names: list[tuple[str, type[Dataset] | type[Model], str]] = [
        *((f, Dataset, v) for f in ("dataset_id", "test_dataset_id") if isinstance(v := getattr(spec, f, None), str)),
        *((f, Model, v) for f in MODEL_REFERENCES if isinstance(v := getattr(spec, f, None), str)),
    ]
    for field, table, value in names:
        if session.scalar(select(table.id).where(table.id == value, table.tenant_id == tenant_id)) is None:
            raise field_error(field, f"no {'dataset' if table is Dataset else 'model'} {value!r}")


def submit_job(
    session: Session, *, tenant_id: str, body: Any, idempotency_key: str | None, settings: Settings, celery: Celery
) -> tuple[Job, bool]:
    """Validate, check the tenant's active-jobs quota, commit, then enqueue. Returns (job, created); a repeated
    Idempotency-Key with the same body returns the original job with created=False, whatever the quota."""
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
        tenant = lock_tenant(session, tenant_id)
        # A twin request with the same key may have committed while this one waited for the lock: it is a replay.
        existing = (
            None if idempotency_key is None else _by_idempotency_key(session, tenant_id, idempotency_key, request_hash)
        )
        if existing is None:
            _check_still_there(session, tenant_id, spec)
            quotas.check_active_jobs(session, tenant=tenant, settings=settings)
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
    except BaseException:
        session.rollback()  # releases the tenant's lock at once
        raise
    if existing is not None:
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


#: What a job's ETag is made of: every write to a job sets ``updated_at`` (its ``onupdate``, also for Core
#: UPDATEs); the others change the tag even for two writes within one tick of the clock.
VERSION_COLUMNS = (Job.updated_at, Job.status, Job.phase, Job.step, Job.progress, Job.attempt)


def job_etag(job_id: str, version: Sequence[Any]) -> str:
    """The strong ETag of a job at ``version`` (the values of ``VERSION_COLUMNS``)."""
    text = "|".join([job_id, *(v.isoformat() if isinstance(v, datetime) else repr(v) for v in version)])
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header (a list of tags, weak ones too, or ``*``) names ``etag``."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


#: A poll's two reads, built once (no ORM loading, and SQLAlchemy keys its compiled-statement cache on them once).
_POLL_VERSION = select(Job.tenant_id, *VERSION_COLUMNS).where(Job.id == bindparam("job_id"))
_POLL_FULL = select(Job.tenant_id, *(getattr(Job, name) for name in JobOut.model_fields)).where(
    Job.id == bindparam("job_id")
)


def poll_job(
    make_session: sessionmaker[Session], *, tenant_id: str, job_id: str, if_none_match: str | None
) -> tuple[int, str, bytes | None]:
    """``(200, etag, JSON body)`` for the tenant's job, or ``(304, etag, None)`` when ``if_none_match`` names
    its current ETag: then only the version columns are read, and nothing is serialised. Raises a 404
    ``Problem`` for an unknown or foreign job."""
    if not looks_like("job", job_id):
        raise not_found("job", job_id)
    with make_session() as session:
        connection = session.connection()
        if if_none_match is not None:
            row = connection.execute(_POLL_VERSION, {"job_id": job_id}).first()
            if row is None or row[0] != tenant_id:
                raise not_found("job", job_id)
            etag = job_etag(job_id, row[1:])
            if etag_matches(if_none_match, etag):
                return 304, etag, None
        full = connection.execute(_POLL_FULL, {"job_id": job_id}).first()
        if full is None or full.tenant_id != tenant_id:
            raise not_found("job", job_id)
        etag = job_etag(job_id, [getattr(full, column.key) for column in VERSION_COLUMNS])
        return 200, etag, JobOut.model_validate(full).model_dump_json().encode()


def list_jobs(
    session: Session,
    *,
    tenant_id: str,
    after: str | None,
    limit: int,
    status: jobs.Status | None = None,
    kind: jobs.Kind | None = None,
    dataset_id: str | None = None,
    model_id: str | None = None,
) -> dict[str, object]:
    """A page of the tenant's jobs, newest first; ``model_id`` keeps those whose spec names that model in any of
    ``MODEL_REFERENCES``."""
    reads = [] if model_id is None else [jobs.reads_model(model_id)]
    return list_owned(
        session,
        Job,
        tenant_id=tenant_id,
        after=after,
        limit=limit,
        where=reads,
        status=status,
        kind=kind,
        dataset_id=dataset_id,
    )


def job_page_response(page: dict[str, object], *, if_none_match: str | None) -> tuple[int, str, bytes | None]:
    """A page of ``list_jobs`` as ``(200, etag, JSON body)``, or ``(304, etag, None)`` when ``if_none_match`` names
    the page's current ETag. The tag is a hash of the body: any change to any job on the page (its ``updated_at``
    moves with every write) or to which jobs are on it changes it."""
    body = _JOB_PAGE.validate_python(page).model_dump_json().encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    if etag_matches(if_none_match, etag):
        return 304, etag, None
    return 200, etag, body


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


#: Metrics events read from the database at once while a JSONL export streams.
METRICS_PAGE = 500


def metrics_jsonl(make_session: sessionmaker[Session], *, job_id: str, page: int = METRICS_PAGE) -> Iterator[bytes]:
    """A job's metrics events as JSON lines, oldest first: ``{"event_id", "created_at", **the event's values}``
    (``epoch``, ``step``, ``loss``, … as the job reported them). Reads ``page`` events at a time, each page in a
    session of its own, so memory stays bounded however long the job ran. The caller checks the job is the
    tenant's."""
    after = 0
    while True:
        with make_session() as session:
            rows = session.execute(
                select(JobEvent.id, JobEvent.created_at, JobEvent.data)
                .where(JobEvent.job_id == job_id, JobEvent.type == "metrics", JobEvent.id > after)
                .order_by(JobEvent.id)
                .limit(page)
            ).all()
        for event_id, created_at, data in rows:
            line = {"event_id": event_id, "created_at": created_at.isoformat().replace("+00:00", "Z"), **(data or {})}
            yield json.dumps(line, separators=(",", ":"), default=str).encode() + b"\n"
        if len(rows) < page:
            return
        after = rows[-1][0]


def tensorboard_archive(session: Session, *, tenant_id: str, job_id: str, settings: Settings) -> Path:
    """A gzipped tar of the job's TensorBoard event files (``<job_id>/events.out.tfevents.…``), written to a
    temporary file the caller removes; 404 ``no_tensorboard_logs`` when the job wrote none."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    directory = settings.tensorboard_job_dir(tenant_id, job.id)
    files = sorted(p for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else []
    if not files:
        raise Problem(
            404,
            "no_tensorboard_logs",
            f'job {job_id} has no TensorBoard logs (submit it with "integrations": ["tensorboard"])',
        )
    handle, name = tempfile.mkstemp(prefix="jaga-tensorboard-", suffix=".tar.gz")
    os.close(handle)
    try:
        with tarfile.open(name, "w:gz") as tar:
            for path in files:
                tar.add(path, arcname=f"{job.id}/{path.relative_to(directory)}", recursive=False)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def cancel_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.status in jobs.TERMINAL:
        raise Problem(409, "job_finished", f"job {job_id} already ended {job.status}")
    job = jobs.request_cancel(session, job=job)
    session.commit()
    return job
