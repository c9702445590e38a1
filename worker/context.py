"""What a job handler gets: its job, settings and store, and fenced ways to report progress."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core import jobs
from api.core.artifacts import ArtifactStore
from api.core.db import UNAVAILABLE, session_scope
from api.core.ids import new_id
from api.core.models import Dataset, Job, Model
from api.core.settings import Settings
from ssl_core.backbones import Backbone
from ssl_core.data import ImageArray
from ssl_core.encoder import EncoderInfo, save_encoder
from ssl_core.train import TrainingStopped
from worker.tracking import MLflowTracker, TensorBoardTracker, Tracker, Trackers

log = logging.getLogger(__name__)
StopReason = Literal["cancel", "shutdown", "lost"]
T = TypeVar("T")


class JobFailed(Exception):
    """A handler's way to fail its job with a stable code and a message for the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Outcome:
    """A handler's result, with ``rows`` and ``write`` applied in the transaction that marks the job succeeded,
    and the artifact directories those rows point at (removed if the result is discarded)."""

    result: dict[str, Any]
    rows: list[Any] = field(default_factory=list)
    write: Callable[[Session], object] | None = None
    artifacts: list[Path] = field(default_factory=list)


class JobContext:
    CANCEL_POLL_SECONDS = 0.5
    PROGRESS_WRITE_SECONDS = 1.0

    def __init__(self, job: Job, settings: Settings, owner: str, shutdown: threading.Event) -> None:
        self.job = job
        self.job_id = job.id
        self.tenant_id = job.tenant_id
        self.settings = settings
        self.store = ArtifactStore(settings.artifacts)
        self.owner = owner
        self.shutdown = shutdown
        self.lease_lost = threading.Event()
        self._last_poll = 0.0
        #: When the job last showed a sign of life (monotonic): the heartbeat gives up on a job stalled past
        #: ``settings.stall_seconds``.
        self.alive_at = time.monotonic()
        self._last_write = 0.0
        self._cancel = False
        #: The spec's ``integrations``: every metrics event is logged to them too.
        self.trackers = Trackers(list(job.spec.get("integrations") or []), self._start_tracker, self._tracker_warning)

    def _start_tracker(self, name: str) -> Tracker:
        if name == "tensorboard":
            return TensorBoardTracker(self.settings.tensorboard_job_dir(self.tenant_id, self.job_id))
        if name == "mlflow":
            return MLflowTracker(self.job_id, self.tenant_id, self.job.spec)
        raise ValueError(f"unknown integration {name!r}")

    def _tracker_warning(self, data: dict[str, Any]) -> None:
        self.event("warning", data)

    def close_trackers(self) -> None:
        """End the job's trackers' runs with the job's status as it stands (a job back in the queue leaves its
        MLflow run open for the attempt that resumes it)."""
        if not self.trackers.names:
            return
        try:
            status = self.with_session(lambda s: s.scalar(select(Job.status).where(Job.id == self.job_id)))
        except UNAVAILABLE:
            status = None
        self.trackers.close(status)

    def session(self) -> AbstractContextManager[Session]:
        """A session that commits on success and rolls back on error."""
        return session_scope(self.settings.database_url)

    def update(self, *, force: bool = True, **values: Any) -> None:
        """Fenced progress update; throttled unless ``force``."""
        now = self.alive_at = time.monotonic()
        if not force and now - self._last_write < self.PROGRESS_WRITE_SECONDS:
            return
        self._last_write = now
        try:
            with self.session() as s:
                if not jobs.update_job(s, job_id=self.job_id, owner=self.owner, **values):
                    self.lease_lost.set()
        except UNAVAILABLE:  # progress is best effort: training goes on through a database restart
            log.warning("job %s: progress not written (database unavailable)", self.job_id)

    def renew_lease(self, session: Session) -> bool:
        """Renew the lease in ``session`` (locking the job's row until it commits); False, and ``lease_lost`` set,
        when another worker owns the job."""
        held = jobs.renew_lease(
            session, job_id=self.job_id, owner=self.owner, lease_seconds=self.settings.lease_seconds
        )
        if not held:
            self.lease_lost.set()
        return held

    def stalled_for(self) -> float | None:
        """Seconds since the job's last sign of life once they pass ``settings.stall_seconds``, else None."""
        idle = time.monotonic() - self.alive_at
        limit = self.settings.stall_seconds
        return idle if limit and idle > limit else None

    def holds_lease(self) -> bool:
        """Renew the lease now; False when another worker owns the job or the database cannot say."""
        if self.lease_lost.is_set():
            return False
        try:
            with self.session() as s:
                return self.renew_lease(s)
        except UNAVAILABLE:  # cannot tell: do not write (the last checkpoint stays)
            log.warning("job %s: lease not confirmed (database unavailable)", self.job_id)
            return False

    def event(self, type: str, data: dict[str, Any]) -> None:
        """Append to the job's event log, fenced: the renewal locks the row, so a worker that lost the job to
        another (say, after being paused past its lease) writes nothing."""
        self.alive_at = time.monotonic()
        written = False
        try:
            with self.session() as s:
                if self.renew_lease(s):
                    jobs.add_event(s, job_id=self.job_id, type=type, data=data)
                    written = True
        except UNAVAILABLE:
            log.warning("job %s: %s event not written (database unavailable)", self.job_id, type)
        if type == "metrics" and (written or not self.lease_lost.is_set()):
            self.trackers.log(data)  # never raises: a failing integration posts a warning and is switched off

    def stop_requested(self) -> StopReason | None:
        now = self.alive_at = time.monotonic()  # every loop asks this each step: the job's pulse
        if self.lease_lost.is_set():
            return "lost"
        if self.shutdown.is_set():
            return "shutdown"
        if not self._cancel and now - self._last_poll >= self.CANCEL_POLL_SECONDS:
            self._last_poll = now
            try:
                with self.session() as s:
                    status = s.scalar(select(Job.status).where(Job.id == self.job_id))
            except UNAVAILABLE:  # asked again at the next poll
                return None
            self._cancel = status == "cancelling"
        return "cancel" if self._cancel else None

    def with_session(self, fn: Callable[[Session], T]) -> T:
        """``fn``'s result on a session of its own (committed, unless ``fn`` raises)."""
        with self.session() as s:
            return fn(s)

    def raise_if_stopped(self) -> None:
        """For handlers outside the training loop: stop the same way the loop does."""
        reason = self.stop_requested()
        if reason is not None:
            raise TrainingStopped(reason, -1)

    def save_model(
        self,
        backbone: Backbone,
        info: EncoderInfo,
        *,
        dataset_id: str,
        metrics: dict[str, Any],
        head: torch.nn.Linear | None = None,
        classes: list[str] | None = None,
        source_model_id: str | None = None,
        parent: Model | None = None,
        lineage_step: dict[str, Any],
    ) -> tuple[Model, Path]:
        """Write a new model's file (a classifier's with ``head`` and ``classes``); returns its row, to be added
        with the outcome, and its directory. Its lineage is ``parent``'s (the model its weights started from)
        followed by this job's ``lineage_step`` (kind, method, …; the job and dataset are added)."""
        model_id = new_id("model")
        path = self.store.model_path(model_id)
        extra = {"job_id": self.job_id, "config": self.job.spec, "metrics": metrics}
        save_encoder(path, backbone, info, extra, head=head, classes=classes)
        row = Model(
            id=model_id,
            tenant_id=self.tenant_id,
            job_id=self.job_id,
            dataset_id=dataset_id,
            method=info.method,
            backbone=info.backbone,
            stem=info.stem,
            image_size=info.image_size,
            embedding_dim=backbone.dim,
            config=self.job.spec,
            metrics=metrics,
            type="encoder" if head is None else "classifier",
            classes=classes,
            source_model_id=source_model_id,
            parent_model_id=parent.id if parent is not None else None,
            lineage=[
                *(parent.lineage or [] if parent is not None else []),
                {"job_id": self.job_id, "dataset_id": dataset_id, **lineage_step},
            ],
            channels=info.channels,
        )
        return row, path.parent

    def owned_model(self, model_id: str) -> Model:
        """One of this tenant's model rows, or ``JobFailed`` when it has been deleted since submission."""
        model = self.with_session(lambda s: s.get(Model, model_id))
        if model is None or model.tenant_id != self.tenant_id:
            raise JobFailed("model_missing", f"model {model_id} no longer exists")
        return model

    def load_dataset(self, dataset_id: str) -> ImageArray:
        """The decoded array of one of this tenant's ready datasets, or ``JobFailed``."""
        dataset = self.with_session(lambda s: s.get(Dataset, dataset_id))
        if dataset is None or dataset.tenant_id != self.tenant_id:
            raise JobFailed("dataset_missing", f"dataset {dataset_id} no longer exists")
        if dataset.status != "ready":
            raise JobFailed("dataset_not_ready", f"dataset {dataset_id} is {dataset.status}")
        return ImageArray.load(self.store.dataset_dir(dataset_id))
