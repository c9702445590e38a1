"""Response bodies, and the cursor pagination every list shares."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select
from sqlalchemy.orm import Session

from api.core.problems import field_error

T = TypeVar("T")
MAX_LIMIT = 200


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_after: str | None = None


def paginate(session: Session, stmt: Select[Any], id_column: Any, after: str | None, limit: int
             ) -> tuple[list[Any], bool]:
    """Newest first; ``after`` is the last id of the previous page (ids sort by creation time)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise field_error("limit", f"must be between 1 and {MAX_LIMIT}")
    if after is not None:
        stmt = stmt.where(id_column < after)
    rows = list(session.scalars(stmt.order_by(id_column.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ClassCount(BaseModel):
    name: str
    count: int


class Rejected(BaseModel):
    file: str
    reason: str


class DatasetOut(ORM):
    id: str
    name: str
    status: str
    source_format: str
    source_filename: str
    source_bytes: int
    num_images: int
    image_shape: list[int] | None
    classes: list[ClassCount]
    num_labelled: int
    rejected: list[Rejected]
    num_rejected: int
    error: dict[str, Any] | None
    ingest_job_id: str | None
    created_at: datetime


class JobOut(ORM):
    id: str
    kind: str
    status: str
    phase: str
    spec: dict[str, Any]
    progress: float
    epoch: int
    step: int
    total_steps: int | None
    loss: float | None
    eta_seconds: float | None
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    attempt: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class EventOut(ORM):
    id: int
    type: str
    data: dict[str, Any]
    created_at: datetime


class EventPage(BaseModel):
    data: list[EventOut]
    has_more: bool
    next_after: int | None


class ModelOut(ORM):
    id: str
    method: str
    backbone: str
    stem: str
    image_size: int
    embedding_dim: int
    dataset_id: str
    job_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime


class IndexOut(ORM):
    id: str
    model_id: str
    dataset_id: str
    job_id: str
    index_type: str
    num_items: int
    dim: int
    created_at: datetime


class Embedding(BaseModel):
    index: int
    embedding: list[float]


class EmbeddingsOut(BaseModel):
    data: list[Embedding]
    dim: int
    model_id: str


class SearchResult(BaseModel):
    item: int
    score: float
    label: str | None
    filename: str


class SearchOut(BaseModel):
    results: list[SearchResult]
    index_id: str
    k: int
