"""Request and response bodies."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import numpy as np
from fastapi import Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError, PydanticUseDefault

T = TypeVar("T")
MAX_K = 1000
#: Query vectors or items in one batch search; its images are bounded by ``max_images_per_request`` instead.
MAX_BATCH_QUERIES = 1000
MAX_TOP_K = 10_000
#: ``job_events.id`` is a 32-bit integer: a larger cursor cannot name an event.
MAX_EVENT_ID = 2**31 - 1
#: A list's ``after``: the ``next_after`` of the previous page, an id (anything else would reach the database).
Cursor = Annotated[
    str | None,
    Query(pattern=r"^[a-z]{2,3}_[0-9a-f]{24}$", description="the previous page's next_after"),
]


def b64decode(value: object) -> bytes:
    """Bytes from a base64 string, also a ``data:`` URL. Raises ``ValueError`` saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_after: str | None = None


class FieldError(BaseModel):
    field: str = Field(description="the field at fault, dotted for nested ones; 'body' for the whole body")
    reason: str


class ProblemOut(BaseModel):
    """An error, as ``application/problem+json`` (RFC 9457). Some add members of their own: a refused quota names
    ``quota``, ``limit``, ``usage`` and ``requested``; ``/readyz`` names its ``checks``."""

    model_config = ConfigDict(extra="allow", title="Problem")
    type: str
    title: str
    status: int
    code: str = Field(description="stable, for programs to act on: not_found, invalid_request, rate_limited, …")
    detail: str
    instance: str | SkipJsonSchema[None] = Field(None, description="the request's path")
    request_id: str | SkipJsonSchema[None] = Field(None, description="also in the X-Request-ID header")
    errors: list[FieldError] | SkipJsonSchema[None] = Field(None, description="the fields at fault, when some are")


#: Binary data in a multipart body, as OpenAPI 3.1 describes it.
BinaryPart = Annotated[bytes, WithJsonSchema({"type": "string", "contentMediaType": "application/octet-stream"})]
#: Binary data in a JSON body.
Base64 = Annotated[str, WithJsonSchema({"type": "string", "contentEncoding": "base64"})]


#: A query vector's norm, within which normalising it in float32 (the index's precision) neither overflows nor
#: loses the vector to underflow (float32 squares overflow past ~1.8e19 and lose precision below ~1e-19).
MIN_VECTOR_NORM, MAX_VECTOR_NORM = 1e-15, 1e15


def _vector_problem(values: list[int | float]) -> str | None:
    """Why ``values`` cannot be searched with once cast to float32, the index's precision, or None."""
    try:
        floats = [float(v) for v in values]
    except OverflowError:  # an int beyond even float64
        return "must be finite numbers (as 32-bit floats)"
    with np.errstate(over="ignore", under="ignore"):
        vector = np.asarray(floats, dtype=np.float32)
    if not np.isfinite(vector).all():
        return "must be finite numbers (as 32-bit floats)"
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if not MIN_VECTOR_NORM <= norm <= MAX_VECTOR_NORM:
        return f"norm must be between {MIN_VECTOR_NORM:g} and {MAX_VECTOR_NORM:g} (got {norm:.3g})"
    return None


def _query_vector(value: Any) -> Any:
    """A query vector as sent, refused (naming why) unless it is a list of numbers float32 can normalise."""
    if not isinstance(value, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise PydanticCustomError("vector_type", "must be a list of numbers")
    problem = _vector_problem(value)
    if problem is not None:
        raise PydanticCustomError("vector_value", problem)
    return value


def _k_or_default(value: Any) -> Any:
    if value is None:
        raise PydanticUseDefault()
    if isinstance(value, bool | float):  # pydantic would take True as 1 and 3.0 as 3
        raise PydanticCustomError("int_type", f"must be an integer from 1 to {MAX_K}")
    return value


def _decode_image(value: Any) -> Any:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return b64decode(value)
    except ValueError as exc:
        raise PydanticCustomError("image_base64", str(exc)) from None


ItemNumber = Annotated[StrictInt, Field(ge=0)]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"hits per query, at most {MAX_K}")]
QueryVector = Annotated[list[float], BeforeValidator(_query_vector)]
QueryImage = Annotated[
    bytes, BeforeValidator(_decode_image), WithJsonSchema({"type": "string", "contentEncoding": "base64"})
]


class SearchQuery(BaseModel):
    """A kNN search: exactly one of ``vector``, ``image`` (base64 in JSON, bytes from multipart) or ``item``
    (searching by an item leaves it out), and ``k``. The index checks the vector's length and the item number."""

    model_config = ConfigDict(extra="forbid")
    vector: list[float] | None = None
    image: Annotated[
        bytes | None, WithJsonSchema({"anyOf": [{"type": "string", "contentEncoding": "base64"}, {"type": "null"}]})
    ] = None
    item: Annotated[StrictInt, Field(ge=0)] | None = None
    k: K = 10

    @field_validator("vector", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        return None if value is None else _query_vector(value)

    @field_validator("image", mode="before")
    @classmethod
    def _decode(cls, value: Any) -> Any:
        return _decode_image(value)

    @field_validator("k", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        return _k_or_default(value)

    @model_validator(mode="after")
    def _one_query(self) -> SearchQuery:
        if sum(v is not None for v in (self.vector, self.image, self.item)) != 1:
            raise PydanticCustomError("one_query", "give exactly one of 'vector', 'image' or 'item'")
        return self


class BatchSearchQuery(BaseModel):
    """Many kNN searches in one request: exactly one of ``vectors``, ``images`` (base64 in JSON, bytes from
    multipart; at most JAGA_MAX_IMAGES_PER_REQUEST, 64) or ``items`` (each left out of its own hits), and one
    ``k`` for all. The index checks each vector's length and item number."""

    model_config = ConfigDict(extra="forbid")
    vectors: Annotated[list[QueryVector], Field(min_length=1, max_length=MAX_BATCH_QUERIES)] | None = None
    images: Annotated[list[QueryImage], Field(min_length=1)] | None = None
    items: Annotated[list[ItemNumber], Field(min_length=1, max_length=MAX_BATCH_QUERIES)] | None = None
    k: K = 10

    @field_validator("k", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        return _k_or_default(value)

    @model_validator(mode="after")
    def _one_kind(self) -> BatchSearchQuery:
        if sum(v is not None for v in (self.vectors, self.images, self.items)) != 1:
            raise PydanticCustomError("one_query", "give exactly one of 'vectors', 'images' or 'items'")
        return self

    @property
    def count(self) -> int:
        return len(self.vectors or self.images or self.items or [])


class ImagesForm(BaseModel):
    """Images for embeddings or predictions as ``multipart/form-data``: the file field ``files``, repeated."""

    files: list[BinaryPart] = Field(min_length=1, description="at most JAGA_MAX_IMAGES_PER_REQUEST (64)")


class ImagesJson(BaseModel):
    """Images for embeddings or predictions as JSON, base64-encoded."""

    images: list[Base64] = Field(min_length=1, description="at most JAGA_MAX_IMAGES_PER_REQUEST (64)")


class SearchForm(BaseModel):
    """A search by image as ``multipart/form-data``."""

    image: BinaryPart
    k: int = Field(10, ge=1, le=MAX_K)


class BatchSearchForm(BaseModel):
    """A batch search by images as ``multipart/form-data``: the file field ``images``, repeated."""

    images: list[BinaryPart] = Field(min_length=1, description="at most JAGA_MAX_IMAGES_PER_REQUEST (64)")
    k: int = Field(10, ge=1, le=MAX_K)


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


class LineageStep(BaseModel):
    """One job in a model's history: what kind of training, on which dataset."""

    job_id: str
    kind: Literal["pretrain", "distill", "linear", "finetune", "supervised"]
    dataset_id: str
    method: str = Field(description="the SSL method, distill, or the evaluation protocol")
    preserve: str | None = Field(None, description="continued pretraining: none, lwf or cassle")
    teacher_model_id: str | None = Field(None, description="distill: the teacher")


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
    type: Literal["encoder", "classifier"]
    classes: list[str] | None = Field(description="a classifier's class names, in output order")
    source_model_id: str | None = Field(description="the encoder a classifier was trained from (none: supervised)")
    parent_model_id: str | None = Field(
        description="the model whose weights this one started from: the encoder a pretrain job continued or a "
        "classifier was trained from (none: trained from scratch, distilled students included)"
    )
    lineage: list[LineageStep] = Field(description="the jobs that trained the weights, oldest first")
    created_at: datetime

    @field_validator("lineage", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


class IndexBuildOut(BaseModel):
    """How an index was built and how well it searches."""

    type: Literal["flat", "hnsw", "ivf"]
    requested: str = Field(description="the spec's index_type: auto, flat, hnsw or ivf")
    params: dict[str, int] = Field(description="hnsw: M, efConstruction, efSearch; ivf: nlist, nprobe")
    ann_threshold: int | None = Field(description="auto: items past which an approximate index is built")
    build_seconds: float | None
    tuning_seconds: float | None = Field(description="of build_seconds, spent measuring recall and tuning")
    recall_at_10: float | None = Field(
        description="mean share of the exact top 10 found, on held-out test queries; 1.0 for flat (exact)"
    )
    recall_queries: int
    recall_query_kind: str | None = Field(description="how the held-out queries were made")
    target_recall: float | None = Field(description="the recall@10 the search parameter was tuned to")
    validation_recall_at_10: float | None = Field(description="what tuning reached, on separate validation queries")


class IndexOut(ORM):
    id: str
    model_id: str
    dataset_id: str
    job_id: str
    index_type: str = Field(description="what was built: flat (exact), hnsw or ivf (approximate)")
    num_items: int
    dim: int
    build: IndexBuildOut | None = Field(description="null for indexes built before this was recorded")
    created_at: datetime


class Embedding(BaseModel):
    index: int
    embedding: list[float]


class EmbeddingsOut(BaseModel):
    data: list[Embedding]
    dim: int
    model_id: str


class ClassProbability(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str = Field(alias="class")
    probability: float


class Prediction(BaseModel):
    index: int
    predictions: list[ClassProbability]


class PredictionsOut(BaseModel):
    data: list[Prediction]
    classes: list[str]
    model_id: str


class LeaderboardEntry(BaseModel):
    job_id: str
    model_id: str | None = Field(description="the classifier the evaluation saved (none for knn)")
    source_model_id: str | None
    method: str | None = Field(description="the evaluated encoder's method, or supervised")
    strategy: str | None = Field(description="finetune's strategy")
    top1: float
    top5: float | None
    created_at: datetime


class LeaderboardGroup(BaseModel):
    protocol: str
    subset_id: str
    label_fraction: float | None
    labels_per_class: int | None
    test_source: str | None
    entries: list[LeaderboardEntry]
    baseline: list[LeaderboardEntry] = Field(description="supervised runs on the same images, best first")


class LeaderboardOut(BaseModel):
    dataset_id: str
    groups: list[LeaderboardGroup]


class SearchResult(BaseModel):
    item: int
    score: float
    label: str | None
    filename: str


class SearchOut(BaseModel):
    results: list[SearchResult]
    index_id: str
    k: int


class BatchSearchHits(BaseModel):
    index: int = Field(description="the query's position in the request")
    results: list[SearchResult]


class BatchSearchOut(BaseModel):
    data: list[BatchSearchHits]
    index_id: str
    k: int


#: ``api_keys.rate_limit_per_minute`` is a 32-bit integer.
MAX_RATE_LIMIT = 2**31 - 1


def _without_nul(value: str) -> str:
    if "\x00" in value:  # PostgreSQL cannot store it
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return value


class KeyCreate(BaseModel):
    """A new API key of the caller's tenant. ``rate_limit_per_minute`` may only lower the service's limit."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_without_nul)]
    scope: Literal["read", "write", "admin"] = "write"
    rate_limit_per_minute: Annotated[StrictInt, Field(ge=1, le=MAX_RATE_LIMIT)] | None = None


class KeyOut(ORM):
    """An API key, never its secret: only its hash is stored."""

    id: str
    name: str
    scope: str
    rate_limit_per_minute: int | None = Field(description="requests a minute; null: the service's default")
    created_at: datetime
    last_used_at: datetime | None = Field(description="to the minute")
    revoked_at: datetime | None


class KeyCreatedOut(KeyOut):
    secret: str = Field(description="the key to send as 'Authorization: Bearer <secret>'; shown only this once")


#: ``webhook_endpoints.url`` and ``.description`` columns.
MAX_WEBHOOK_URL, MAX_WEBHOOK_DESCRIPTION = 2048, 500


class WebhookCreate(BaseModel):
    """A new webhook endpoint of the caller's tenant: where to POST which job events."""

    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(min_length=1, max_length=MAX_WEBHOOK_URL), AfterValidator(_without_nul)] = Field(
        description="http or https; its host must resolve to public addresses unless JAGA_WEBHOOK_ALLOW_PRIVATE"
    )
    events: list[str] = Field(
        min_length=1,
        max_length=10,
        description="any of job.succeeded, job.failed, job.cancelled, job.metrics (per-epoch metrics)",
    )
    description: Annotated[str, Field(max_length=MAX_WEBHOOK_DESCRIPTION), AfterValidator(_without_nul)] = ""


class WebhookOut(ORM):
    """A webhook endpoint, never its secret."""

    id: str
    url: str
    events: list[str]
    description: str
    created_at: datetime


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(
        description="whsec_ and base64: the key of the deliveries' webhook-signature (Standard Webhooks); "
        "shown only this once"
    )


class DeliveryAttempt(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryOut(ORM):
    """One event sent (or being sent) to an endpoint; its ``id`` is the deliveries' ``webhook-id`` header."""

    id: str
    endpoint_id: str
    event_type: str
    job_id: str | None
    status: Literal["pending", "succeeded", "failed"]
    attempts: list[DeliveryAttempt] = Field(description="every attempt so far, oldest first")
    next_attempt_at: datetime | None = Field(description="a pending delivery's next attempt")
    response_status_code: int | None = Field(description="the last attempt's answer")
    response_body: str | None = Field(description="the last answer's first 1024 bytes")
    error: str | None = Field(description="why the last attempt failed")
    duration_ms: float | None = Field(description="the last attempt's")
    created_at: datetime
    finished_at: datetime | None


class MapPoint(BaseModel):
    item: int = Field(description="the item's number in the dataset")
    x: float
    y: float
    label: str | None


class MapOut(BaseModel):
    """A model's embeddings of some of a dataset's items, projected on their first two principal components."""

    model_id: str
    dataset_id: str
    method: Literal["pca"]
    explained_variance: list[float] = Field(description="the fraction of the variance each axis explains")
    points: list[MapPoint]


class WorkerOut(BaseModel):
    id: str
    hostname: str
    pid: int
    started_at: datetime
    last_seen_at: datetime
    busy: bool = Field(description="whether it holds a job's lease")
    job_id: str | None = Field(description="the job it holds, when that job is the caller's tenant's")
    job_kind: str | None
    job_status: str | None


class QuotasOut(BaseModel):
    max_active_jobs: int = Field(description="jobs queued, running or cancelling at once, ingestion included; 0: none")
    max_stored_bytes: int = Field(
        description="bytes of uploaded archives kept until their datasets are deleted; 0: none"
    )


class UsageCountsOut(BaseModel):
    active_jobs: int
    stored_bytes: int


class UsageOut(BaseModel):
    """The caller's tenant: its quotas, its usage of them, and the calling key's rate limit."""

    tenant: str
    quotas: QuotasOut
    usage: UsageCountsOut
    rate_limit_per_minute: int = Field(description="this key's requests a minute, per API process; 0: none")


class QueueOut(BaseModel):
    """The caller's jobs by status, the broker's queue and the live workers."""

    queue: str
    queue_depth: int | None = Field(description="messages waiting in the broker's queue; null when it did not answer")
    jobs: dict[str, int] = Field(description="the tenant's jobs (ingestion left out) by status")
    workers: list[WorkerOut]
