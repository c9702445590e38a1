"""SQLAlchemy models: tenants, API keys, datasets, jobs, job events, models, indexes and webhooks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Quotas; None takes the service-wide default from the settings.
    max_active_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)


class ApiKey(Base):
    """An API key, stored as the SHA-256 of the secret (keys are 32 random bytes, so no salt is needed)."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(8), default="write")  # read < write < admin
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)  # None: the settings' default
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="ingesting")  # ingesting | ready | failed
    source_format: Mapped[str] = mapped_column(String(16))  # zip | tar | npz
    source_filename: Mapped[str] = mapped_column(String(300), default="")
    source_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    num_images: Mapped[int] = mapped_column(Integer, default=0)
    image_shape: Mapped[list[Any] | None] = mapped_column(default=None)  # [C, H, W] as stored
    classes: Mapped[list[Any]] = mapped_column(default=list)  # [{"name", "count"}]
    num_labelled: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[list[Any]] = mapped_column(default=list)  # [{"file", "reason"}], first 1000
    num_rejected: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    ingest_job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_status_kind", "tenant_id", "status", "kind"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # ingest | pretrain | distill | index | evaluate | embed
    status: Mapped[str] = mapped_column(String(16), default="queued")
    phase: Mapped[str] = mapped_column(String(32), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dataset_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, default=None)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    eta_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # {"code", "message"}
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(100), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(16))  # state | message | metrics | warning
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(String(32))
    dataset_id: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(32))
    backbone: Mapped[str] = mapped_column(String(32))
    stem: Mapped[str] = mapped_column(String(16))
    image_size: Mapped[int] = mapped_column(Integer)
    embedding_dim: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    type: Mapped[str] = mapped_column(String(16), default="encoder", server_default="encoder")  # | classifier
    classes: Mapped[list[Any] | None] = mapped_column(default=None)  # a classifier's class names, in output order
    source_model_id: Mapped[str | None] = mapped_column(String(32), default=None)  # what a classifier started from
    parent_model_id: Mapped[str | None] = mapped_column(String(32), default=None)  # whose weights it started from
    lineage: Mapped[list[Any] | None] = mapped_column(default=None)  # the jobs that trained it, oldest first
    channels: Mapped[int | None] = mapped_column(Integer, default=None)  # 1 or 3, as its images are fitted
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class VectorIndex(Base):
    __tablename__ = "indexes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(32))
    dataset_id: Mapped[str] = mapped_column(String(32))
    index_type: Mapped[str] = mapped_column(String(32))  # what was built: flat, hnsw or ivf
    num_items: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    #: ``api.core.knn_index.IndexInfo``: parameters, build time, measured recall; null for older indexes.
    build: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


__all__ = [
    "ApiKey",
    "Base",
    "Dataset",
    "Job",
    "JobEvent",
    "Model",
    "Tenant",
    "VectorIndex",
    "WebhookDelivery",
    "WebhookEndpoint",
    "utcnow",
]


class Worker(Base):
    """A live worker process: written on start and every heartbeat, removed on a clean stop."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), default=None)


class WebhookEndpoint(Base):
    """A URL of a tenant's that receives signed deliveries of the events it subscribes to. The signing secret is
    stored as is: the service needs it to sign (unlike an API key, which it only compares)."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[Any]] = mapped_column(default=list)  # names from api.core.webhooks.JOB_EVENTS
    description: Mapped[str] = mapped_column(String(500), default="")
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint (the outbox): added in the transaction of the change it reports, sent by the
    API processes' dispatchers, which claim it with a conditional UPDATE before each attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # msg_…: the webhook-id header
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the job event's data
    payload: Mapped[str | None] = mapped_column(Text, default=None)  # the body, fixed at the first attempt
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | succeeded | failed
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[list[Any]] = mapped_column(default=list)  # [{"at", "status_code", "error", "duration_ms"}]
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    response_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[str | None] = mapped_column(Text, default=None)  # the last response's, truncated
    error: Mapped[str | None] = mapped_column(String(500), default=None)
    duration_ms: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
