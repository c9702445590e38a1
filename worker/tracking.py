"""Experiment tracking: a pretrain or distill job's ``integrations`` log every metrics event it posts to
TensorBoard (event files under ``Settings.tensorboard_job_dir``) and to MLflow (a run named after the job, on
MLflow's own ``MLFLOW_TRACKING_URI``; ``MLFLOW_EXPERIMENT_NAME`` picks the experiment, default ``jaga``).

Tracking never fails a job: an integration that cannot start or log posts one ``warning`` event
(``integration_failed``) and is switched off for the rest of the attempt."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)
#: The job's final status → the MLflow run's.
MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
#: Event keys that are positions, not metrics.
POSITION_KEYS = ("epoch", "step")


def scalars(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """The finite numbers in a metrics event, nested dicts flattened with ``/`` (``test/top1``)."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, name + "/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


class Tracker(Protocol):
    name: str

    def log(self, metrics: list[tuple[str, float]], step: int) -> None: ...

    def close(self, status: str | None) -> None: ...


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: list[tuple[str, float]], step: int) -> None:
        for key, value in metrics:
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self, status: str | None) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run per job (found again by its ``jaga.job_id`` tag when a later attempt resumes the job); the
    spec's fields are its parameters."""

    name = "mlflow"

    def __init__(self, job_id: str, tenant_id: str, spec: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "jaga")
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id if experiment is not None else self.client.create_experiment(experiment_name)
        )
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`jaga.job_id` = '{job_id}'")
        if found:
            self.run_id = found[0].info.run_id
            return
        run = self.client.create_run(
            experiment_id, run_name=job_id, tags={"jaga.job_id": job_id, "jaga.tenant_id": tenant_id}
        )
        self.run_id = run.info.run_id
        params = [Param(key, str(value)[:500]) for key, value in _flat(spec)]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, metrics: list[tuple[str, float]], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in metrics])

    def close(self, status: str | None) -> None:
        if status in MLFLOW_STATUS:  # a job that goes back to the queue keeps its run open for the next attempt
            self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])


def _flat(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


class Trackers:
    """The job's trackers, started on its first metrics event. ``warn`` posts a warning event for the job."""

    def __init__(
        self, names: list[str], start: Callable[[str], Tracker], warn: Callable[[dict[str, Any]], None]
    ) -> None:
        self.names = list(dict.fromkeys(names))
        self._start = start
        self._warn = warn
        self._active: dict[str, Tracker] | None = None
        self.step = 0

    def _trackers(self) -> dict[str, Tracker]:
        if self._active is None:
            self._active = {}
            for name in self.names:
                try:
                    self._active[name] = self._start(name)
                except Exception as exc:  # noqa: BLE001 - a tracker never fails the job
                    self._failed(name, "could not start", exc)
        return self._active

    def _failed(self, name: str, what: str, exc: BaseException) -> None:
        log.warning("integration %s %s", name, what, exc_info=True)
        message = f"{name} {what}: {type(exc).__name__}: {exc}; the job goes on without it"
        try:
            self._warn({"code": "integration_failed", "integration": name, "message": message[:1000]})
        except Exception:
            log.warning("integration warning not posted", exc_info=True)

    def log(self, data: dict[str, Any]) -> None:
        """Log a metrics event's numbers at its ``step`` (else the last step seen)."""
        if not self.names:
            return
        step = data.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            self.step = step
        metrics = [(k, v) for k, v in scalars(data) if k not in POSITION_KEYS]
        if not metrics:
            return
        active = self._trackers()
        for name, tracker in list(active.items()):
            try:
                tracker.log(metrics, self.step)
            except Exception as exc:  # noqa: BLE001 - a tracker never fails the job
                del active[name]
                self._failed(name, "failed to log", exc)

    def close(self, status: str | None) -> None:
        for name, tracker in (self._active or {}).items():
            try:
                tracker.close(status)
            except Exception:
                log.warning("integration %s did not close", name, exc_info=True)
        self._active = None
