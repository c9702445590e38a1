"""The README's run command, driven over HTTP: `jaga serve` on SQLite + filesystem broker, no services."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import class_folder_zip, png_bytes, wait_for_job
from tests.servers import KEY, Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "jaga-data"


@pytest.fixture
def server(data_dir: Path, tmp_path: Path) -> Iterator[Server]:
    s = Server(data_dir, tmp_path / "serve.log")
    yield s
    s.stop()


def test_embedded_default_end_to_end_and_survives_restart(server: Server, data_dir: Path, tmp_path: Path):
    headers = {"Authorization": f"Bearer {KEY}"}
    archive = class_folder_zip(n_per_class=24, size=16)
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
        r = c.post("/v1/datasets", files={"file": ("d.zip", archive)}, data={"name": "e2e"})
        assert r.status_code == 202, r.text
        ds = r.json()
        assert wait_for_job(c, ds["ingest_job_id"], timeout=300)["status"] == "succeeded"
        job = c.post(
            "/v1/jobs",
            json={
                "kind": "pretrain",
                "dataset_id": ds["id"],
                "epochs": 2,
                "stem": "standard",
                "image_size": 16,
                "batch_size": 16,
            },
        ).json()
        job = wait_for_job(c, job["id"], timeout=300)
        assert job["status"] == "succeeded", job
        assert job["result"]["metrics"]["skipped_steps"] == 0
        model_id = job["result"]["model_id"]
        ijob = wait_for_job(
            c,
            c.post("/v1/jobs", json={"kind": "index", "dataset_id": ds["id"], "model_id": model_id}).json()["id"],
            timeout=300,
        )
        assert ijob["status"] == "succeeded", ijob
        index_id = ijob["result"]["index_id"]
        query = png_bytes(np.zeros((16, 16), np.uint8))
        results = c.post(f"/v1/indexes/{index_id}/search", files={"image": ("q.png", query)}, data={"k": "3"}).json()[
            "results"
        ]
        assert len(results) == 3
        emb = c.post(f"/v1/models/{model_id}/embeddings", files=[("files", ("q.png", query))]).json()
        assert emb["dim"] == 512
        assert 'jaga_jobs{kind="pretrain",status="succeeded"} 1.0' in c.get("/metrics").text
        ejob_id, embeddings = _embed_the_dataset(c, ds["id"], model_id, archive)
        classifier_id = _evaluations_rank_and_a_classifier_predicts(c, ds["id"], model_id, query)
        _distil_the_classifier_and_continue_the_encoder(c, ds["id"], model_id, classifier_id, query)
        bad = c.post("/v1/jobs", json={"kind": "pretrain", "dataset_id": ds["id"], "method": "nope"})
        assert bad.status_code == 422
        assert bad.headers["content-type"] == "application/problem+json"

    server.stop()
    assert (data_dir / "jaga.db").exists()
    again = Server(data_dir, tmp_path / "serve2.log")
    try:
        with httpx.Client(base_url=again.url, headers=headers, timeout=60) as c:
            assert c.get(f"/v1/datasets/{ds['id']}").json()["status"] == "ready"
            assert c.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
            assert c.get(f"/v1/models/{model_id}").json()["id"] == model_id
            r = c.post(f"/v1/models/{classifier_id}/predictions", files=[("files", ("q.png", query))])
            assert r.status_code == 200, r.text
            r = c.post(f"/v1/indexes/{index_id}/search", json={"item": 0, "k": 2})
            assert r.status_code == 200
            assert len(r.json()["results"]) == 2
            assert c.get(f"/v1/jobs/{ejob_id}/embeddings").content == embeddings
    finally:
        again.stop()


def _embed_the_dataset(c: httpx.Client, dataset_id: str, model_id: str, archive: bytes) -> tuple[str, bytes]:
    """An embed job's array: every image with its label and file name, embedded as the endpoint embeds the file."""
    job = c.post("/v1/jobs", json={"kind": "embed", "dataset_id": dataset_id, "model_id": model_id, "batch_size": 16})
    assert job.status_code == 202, job.text
    done = wait_for_job(c, job.json()["id"], timeout=300)
    assert done["status"] == "succeeded", done
    assert done["result"]["num_items"] == 48
    r = c.get(f"/v1/jobs/{done['id']}/embeddings")
    assert r.status_code == 200
    rows = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert sorted(set(rows["label"].tolist())) == ["cat", "dog"]
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        image = zf.read(str(rows["filename"][5]))  # the archive's entry name
    served = c.post(f"/v1/models/{model_id}/embeddings", files=[("files", ("x.png", image))]).json()
    assert np.abs(rows["embedding"][5] - np.array(served["data"][0]["embedding"])).max() <= 1e-4
    return done["id"], r.content


def _evaluations_rank_and_a_classifier_predicts(c: httpx.Client, dataset_id: str, model_id: str, query: bytes) -> str:
    """Every protocol on the pretrained encoder's dataset, the leaderboard that ranks them, and a prediction."""
    tiny = {"epochs": 2, "batch_size": 8}
    bodies = [
        {"protocol": "knn", "model_id": model_id, "k": 5},
        {"protocol": "linear", "model_id": model_id},
        {"protocol": "finetune", "model_id": model_id, "strategy": "partial", "trainable_blocks": 1, **tiny},
        {"protocol": "supervised", "image_size": 16, **tiny},
        {"protocol": "finetune", "model_id": model_id, "strategy": "frozen", **tiny},
        {"protocol": "finetune", "model_id": model_id, "strategy": "full", **tiny},
    ]
    jobs = [c.post("/v1/jobs", json={"kind": "evaluate", "dataset_id": dataset_id, **b}).json() for b in bodies]
    done = [wait_for_job(c, j["id"], timeout=300) for j in jobs]
    assert [j["status"] for j in done] == ["succeeded"] * 6, done
    board = c.get(f"/v1/datasets/{dataset_id}/leaderboard").json()
    assert {g["protocol"] for g in board["groups"]} == {"knn", "linear", "finetune", "supervised"}
    finetune = next(g for g in board["groups"] if g["protocol"] == "finetune")
    assert {e["strategy"] for e in finetune["entries"]} == {"partial", "frozen", "full"}
    assert finetune["baseline"][0]["job_id"] == done[3]["id"]  # the same default subset
    classifier_id = done[2]["result"]["model_id"]
    r = c.post(f"/v1/models/{classifier_id}/predictions", files=[("files", ("q.png", query))], params={"top_k": 2})
    assert r.status_code == 200, r.text
    predictions = r.json()["data"][0]["predictions"]
    assert sorted(p["class"] for p in predictions) == ["cat", "dog"]
    assert sum(p["probability"] for p in predictions) == pytest.approx(1.0, abs=1e-4)
    return classifier_id


def _distil_the_classifier_and_continue_the_encoder(
    c: httpx.Client, dataset_id: str, model_id: str, classifier_id: str, query: bytes
) -> None:
    """A logit-distilled MobileNet student predicts the teacher's classes; a CaSSLe continuation records its
    lineage."""
    tiny = {"epochs": 1, "batch_size": 8}
    bodies = [
        {"kind": "distill", "teacher_model_id": classifier_id, "dataset_id": dataset_id, "objective": "logits", **tiny},
        {"kind": "pretrain", "init_model_id": model_id, "dataset_id": dataset_id, "preserve": "cassle", **tiny},
    ]
    student, continued = (wait_for_job(c, c.post("/v1/jobs", json=b).json()["id"], timeout=300) for b in bodies)
    assert (student["status"], continued["status"]) == ("succeeded", "succeeded"), (student, continued)
    r = c.post(f"/v1/models/{student['result']['model_id']}/predictions", files=[("files", ("q.png", query))])
    assert r.status_code == 200, r.text
    assert sorted(p["class"] for p in r.json()["data"][0]["predictions"]) == ["cat", "dog"]
    child = c.get(f"/v1/models/{continued['result']['model_id']}").json()
    assert [(s["kind"], s["preserve"]) for s in child["lineage"]] == [("pretrain", None), ("pretrain", "cassle")]
