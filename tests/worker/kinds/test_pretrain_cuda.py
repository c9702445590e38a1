"""A pretrain job with ``JAGA_DEVICE=cuda`` through the worker (skipped without a CUDA device)."""

from __future__ import annotations

import pytest
import torch

from tests.worker.helpers import TINY, get_job, submit

pytestmark = pytest.mark.gpu


@pytest.fixture
def settings(make_settings, clean_database):  # type: ignore[no-untyped-def]
    return make_settings(heartbeat_seconds=0.2, lease_seconds=5, device="cuda")


def test_a_pretrain_job_runs_on_the_gpu(client, auth, run, dataset, settings):
    """``JAGA_DEVICE=cuda``: the worker trains on the GPU, in the precision it measured there."""
    assert settings.device == "cuda"
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 2, **TINY, "image_size": 32})
    assert run(job["id"]) == "succeeded", get_job(client, auth, job["id"])
    metrics = get_job(client, auth, job["id"])["result"]["metrics"]
    assert metrics["skipped_steps"] == 0
    assert metrics["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "float32")
    assert metrics["device"] == "cuda"
    assert 0.0 <= metrics["knn_accuracy"] <= 1.0
