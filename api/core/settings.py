"""One validated settings object (env prefix ``JAGA_``) shared by the API, the worker and Alembic."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JAGA_", extra="ignore")

    env: Literal["development", "production"] = "development"
    #: ``json``: one object per line with request, tenant and job ids; ``text``: for reading in a terminal.
    log_format: Literal["json", "text"] = "json"
    #: Root for everything the embedded default keeps: SQLite file, broker folders, artifacts.
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("jaga")))
    database_url: str = ""  # default: SQLite under data_dir
    broker_url: str = ""  # default: kombu's filesystem transport under data_dir
    artifact_root: Path | None = None  # default: data_dir/artifacts
    #: ``auto`` (CUDA when there is a device, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; checked when a
    #: server or worker starts (``jaga serve``, ``jaga worker``).
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    #: Where jobs with the ``tensorboard`` integration write their event files, one folder per tenant and job
    #: (default: artifact_root/tensorboard).
    tensorboard_dir: Path | None = None
    bootstrap_key: str | None = None

    # Limits on what clients may send.
    max_upload_bytes: int = Field(1 << 30, ge=1024)
    max_image_pixels: int = Field(25_000_000, ge=64)
    max_archive_entries: int = Field(200_000, ge=1)
    max_images_per_request: int = Field(64, ge=1)
    max_request_image_bytes: int = Field(20 << 20, ge=1024)
    # Archives are held to these as they inflate: declared sizes at upload, bytes actually read at ingest.
    max_entry_bytes: int = Field(64 << 20, ge=1024)  # one archive entry, inflated (npz arrays: only the total)
    max_inflated_bytes: int = Field(20 << 30, ge=1024)  # a whole archive, inflated
    max_compression_ratio: float = Field(200.0, ge=1)  # inflated / compressed, per zip entry and per archive
    max_dataset_bytes: int = Field(8 << 30, ge=1024)  # the decoded uint8 array a dataset is stored as
    stored_max_side: int = Field(256, ge=8, le=4096)
    #: Embedding, prediction and search requests decoding images or running a model at once, per API process.
    inference_concurrency: int = Field(2, ge=1, le=64)
    #: Image requests a process accepts at once, running or waiting for the pool; more get a 503 to retry.
    inference_max_pending: int = Field(8, ge=1, le=1024)
    #: Concurrent embedding or prediction requests to one model share a forward pass of at most this many images
    #: (a larger request runs alone) ...
    batch_max_images: int = Field(64, ge=1, le=4096)
    #: ... made of the requests that arrive within this many milliseconds of the batch's first (0: only those
    #: that queued while the previous batch ran).
    batch_wait_ms: float = Field(2.0, ge=0, le=1000)

    #: Index jobs with ``index_type`` auto build an approximate index past this many items, else an exact one.
    index_ann_threshold: int = Field(100_000, ge=1)

    # Tenants and keys (0 = no limit); a tenant's or key's own column overrides these.
    max_active_jobs_per_tenant: int = Field(20, ge=0)  # queued, running or cancelling, ingest included
    max_stored_bytes_per_tenant: int = Field(20 << 30, ge=0)  # uploaded archives kept on disk
    rate_limit_per_minute: int = Field(600, ge=0)  # per key and API process; also the burst
    #: Seconds an API process trusts a key it has looked up; a key revoked elsewhere (the CLI, another API
    #: process) is refused at most this long after (at once through this process). 0: every request reads it.
    auth_cache_seconds: float = Field(5.0, ge=0, le=300)
    #: When set, /metrics wants ``Authorization: Bearer <token>``.
    metrics_token: str | None = None

    # Job leases.
    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)
    reaper_interval_seconds: float = Field(15.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    #: A running job that shows no sign of life (a training step, a progress write, a cancel poll) for this long
    #: is stalled: its worker stops renewing the lease and exits, so the job resumes elsewhere. 0: never.
    stall_seconds: float = Field(1800.0, ge=0)
    queue_name: str = "jaga"
    #: /readyz answers 503 while no worker has been heard from (``jaga serve`` with its worker sets it).
    ready_requires_worker: bool = False
    #: Database connections an API process keeps open, and the blocking calls (database, files) it runs
    #: at once; PostgreSQL needs this many per process (twice as many at worst) under its ``max_connections``.
    db_pool_size: int = Field(10, ge=1, le=200)

    # Webhooks (``/v1/webhooks``): deliveries are sent by a dispatcher thread in each API process.
    #: Allow endpoint URLs resolving to private, loopback or link-local addresses (refused by default: SSRF).
    webhook_allow_private: bool = False
    #: Endpoints a tenant may register.
    webhook_max_endpoints_per_tenant: int = Field(20, ge=1, le=1000)
    #: Seconds to wait after each failed attempt before the next (±20 % jitter); a delivery fails after
    #: ``len(webhook_retry_seconds) + 1`` attempts. JSON in the environment: ``JAGA_WEBHOOK_RETRY_SECONDS='[1, 5]'``.
    webhook_retry_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 7200.0], max_length=20
    )
    #: Seconds one attempt may take (connect and read); redirects are not followed.
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60)
    #: How often the dispatcher looks for due deliveries, and how many it claims at once.
    webhook_poll_seconds: float = Field(1.0, gt=0, le=60)
    webhook_batch_size: int = Field(50, ge=1, le=1000)
    #: Deliveries one API process sends at once.
    webhook_concurrency: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _defaults_and_safety(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'jaga.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.artifact_root is None:
            self.artifact_root = self.data_dir / "artifacts"
        if self.env == "production":
            if self.database_url.startswith("sqlite"):
                raise ValueError("JAGA_DATABASE_URL must name a server database in production, not SQLite")
            if self.broker_url.startswith("filesystem"):
                raise ValueError("JAGA_BROKER_URL must name a real broker in production, not filesystem://")
            if self.bootstrap_key is not None and len(self.bootstrap_key) < 24:
                raise ValueError("JAGA_BOOTSTRAP_KEY must be at least 24 characters in production")
        return self

    @property
    def embedded(self) -> bool:
        """True for the one-command default: SQLite, migrated on start."""
        return self.database_url.startswith("sqlite")

    @property
    def worker_silent_seconds(self) -> float:
        """A worker not heard from for this long counts as gone."""
        return 3 * self.heartbeat_seconds

    @property
    def artifacts(self) -> Path:
        assert self.artifact_root is not None
        return self.artifact_root

    @property
    def tensorboard_root(self) -> Path:
        return self.tensorboard_dir if self.tensorboard_dir is not None else self.artifacts / "tensorboard"

    def tensorboard_job_dir(self, tenant_id: str, job_id: str) -> Path:
        """A job's TensorBoard event files."""
        return self.tensorboard_root / tenant_id / job_id

    @property
    def broker_folder(self) -> Path:
        return self.data_dir / "broker"


@lru_cache
def get_settings() -> Settings:
    return Settings()
