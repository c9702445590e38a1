"""Experiment tracking: a tiny pretrain job with ``integrations`` logs its metrics events to TensorBoard (read back
with TensorBoard's own reader, and downloaded through the API) and MLflow (a ``file:`` store under tmp_path); a
failing integration posts a warning and the job still succeeds."""

from __future__ import annotations

import io
import tarfile

import pytest

from tests.worker.helpers import TINY, get_job, job_events, submit


@pytest.fixture
def settings(make_settings, clean_database, tmp_path):  # type: ignore[no-untyped-def]
    return make_settings(heartbeat_seconds=0.2, lease_seconds=5, tensorboard_dir=tmp_path / "tensorboard")


def test_tensorboard_and_mlflow_get_every_metrics_event(client, auth, run, dataset, settings, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "jaga-test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this switch
    spec = {
        "kind": "pretrain",
        "dataset_id": dataset["id"],
        "epochs": 2,
        **TINY,
        "integrations": ["tensorboard", "mlflow"],
    }
    job = submit(client, auth, spec)
    assert job["spec"]["integrations"] == ["tensorboard", "mlflow"]
    assert run(job["id"]) == "succeeded"
    assert [e["data"] for e in job_events(client, auth, job["id"]) if e["type"] == "warning"] == []
    epochs = [e["data"] for e in job_events(client, auth, job["id"]) if e["type"] == "metrics" and "loss" in e["data"]]

    [directory] = list(settings.tensorboard_root.glob(f"*/{job['id']}"))  # one folder per tenant, then per job
    events = EventAccumulator(str(directory))
    events.Reload()
    assert {"loss", "lr", "embedding_std", "knn_accuracy"} <= set(events.Tags()["scalars"])
    assert [(s.step, round(s.value, 5)) for s in events.Scalars("loss")] == [(e["step"], e["loss"]) for e in epochs]

    r = client.get(f"/v1/jobs/{job['id']}/tensorboard", headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = tar.getnames()
    assert names
    assert all(n.startswith(f"{job['id']}/events.out.tfevents.") for n in names)

    client_ = mlflow.tracking.MlflowClient()
    experiment = client_.get_experiment_by_name("jaga-test")
    [found] = client_.search_runs([experiment.experiment_id], filter_string=f"tags.`jaga.job_id` = '{job['id']}'")
    assert found.info.run_name == job["id"]
    assert found.info.status == "FINISHED"
    assert found.data.params["method"] == "simclr"
    assert found.data.params["dataset_id"] == dataset["id"]
    history = client_.get_metric_history(found.info.run_id, "loss")
    assert [(m.step, round(m.value, 5)) for m in history] == [(e["step"], e["loss"]) for e in epochs]


def test_a_failing_integration_warns_and_never_fails_the_job(client, auth, run, dataset, make_settings, tmp_path):
    pytest.importorskip("tensorboard")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    spec = {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY, "integrations": ["tensorboard"]}
    job = submit(client, auth, spec)
    from worker.runner import run_job

    broken = make_settings(heartbeat_seconds=0.2, lease_seconds=5, tensorboard_dir=blocker / "tensorboard")
    assert run_job(job["id"], settings=broken, send=lambda j: True) == "succeeded"
    warnings = [e["data"] for e in job_events(client, auth, job["id"]) if e["type"] == "warning"]
    assert len(warnings) == 1  # once, then the integration is off
    assert warnings[0]["code"] == "integration_failed"
    assert warnings[0]["integration"] == "tensorboard"
    assert "could not start" in warnings[0]["message"]
    assert get_job(client, auth, job["id"])["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{job['id']}/tensorboard", headers=auth).json()["code"] == "no_tensorboard_logs"
