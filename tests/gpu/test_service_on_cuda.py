"""The embedded service (`jaga serve`: SQLite, filesystem broker, one worker) with ``JAGA_DEVICE=cuda``, driven
over HTTP: pretraining, an embed job and an index build run on the GPU, and the API's embeddings of the trained
model match those the same service serves with ``JAGA_DEVICE=cpu``. Needs no PostgreSQL or Redis, so it runs on a
GPU machine that has only Jaga's own packages (bench/device/run.sh). Skipped without CUDA."""

from __future__ import annotations

import io
from importlib.util import find_spec
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.helpers import class_folder_zip, png_bytes, upload_dataset, wait_for_job
from tests.servers import HEADERS, Server

# Skipped only where the service is not installed at all: an installed one that fails to import fails the test.
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(find_spec("fastapi") is None, reason="the service's packages are not installed"),
]


def _embeddings(c: httpx.Client, model_id: str, images: list[bytes]) -> np.ndarray:
    files = [("files", (f"{i}.png", image)) for i, image in enumerate(images)]
    r = c.post(f"/v1/models/{model_id}/embeddings", files=files)
    assert r.status_code == 200, r.text
    return np.array([row["embedding"] for row in r.json()["data"]], dtype=np.float32)


def _succeeds(c: httpx.Client, body: dict) -> dict:
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = wait_for_job(c, r.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    return job


def test_the_service_trains_embeds_and_indexes_on_the_gpu(cuda: torch.device, tmp_path: Path) -> None:
    data_dir = tmp_path / "jaga-data"
    rng = np.random.default_rng(1)
    queries = [png_bytes(rng.integers(0, 256, (32, 32), dtype=np.uint8)) for _ in range(8)]
    server = Server(data_dir, tmp_path / "cuda.log", env={"JAGA_DEVICE": "cuda"})
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as c:
            ds = upload_dataset(c, None, class_folder_zip(n_per_class=32, size=32), name="gpu")
            job = _succeeds(
                c, {"kind": "pretrain", "dataset_id": ds["id"], "epochs": 2, "image_size": 32, "batch_size": 16}
            )
            metrics = job["result"]["metrics"]
            assert metrics["device"] == "cuda", metrics
            assert metrics["skipped_steps"] == 0
            assert metrics["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "float32")
            model_id = job["result"]["model_id"]
            events = c.get(f"/v1/jobs/{job['id']}/events").json()["data"]
            assert any(" on cuda: " in e["data"].get("message", "") for e in events), events

            embed = _succeeds(c, {"kind": "embed", "dataset_id": ds["id"], "model_id": model_id, "batch_size": 16})
            rows = np.load(io.BytesIO(c.get(f"/v1/jobs/{embed['id']}/embeddings").content), allow_pickle=False)
            assert rows["embedding"].shape == (64, 512)
            assert np.isfinite(rows["embedding"]).all()
            index = _succeeds(c, {"kind": "index", "dataset_id": ds["id"], "model_id": model_id})
            vector = rows["embedding"][5].tolist()
            r = c.post(f"/v1/indexes/{index['result']['index_id']}/search", json={"vector": vector, "k": 4})
            assert r.status_code == 200, r.text
            nearest = r.json()["results"][0]  # the embed job and the index build embedded the image alike
            assert (nearest["filename"], nearest["score"]) == (rows["filename"][5], pytest.approx(1.0, abs=1e-3))
            on_gpu = _embeddings(c, model_id, queries)
    finally:
        server.stop()

    server = Server(data_dir, tmp_path / "cpu.log", env={"JAGA_DEVICE": "cpu"})
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as c:
            on_cpu = _embeddings(c, model_id, queries)
    finally:
        server.stop()
    cosine = (on_gpu * on_cpu).sum(axis=1)  # served embeddings are L2-normalised
    assert cosine.min() >= 0.999, cosine
