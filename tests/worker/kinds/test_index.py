"""Index jobs: a searchable index, and a clear failure for a model with non-finite embeddings."""

from __future__ import annotations

from tests.worker.helpers import TINY, get_job, submit


def test_index_job_builds_searchable_index(client, auth, run, dataset):
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY})
    run(job["id"])
    model_id = get_job(client, auth, job["id"])["result"]["model_id"]
    ijob = submit(client, auth, {"kind": "index", "dataset_id": dataset["id"], "model_id": model_id})
    assert run(ijob["id"]) == "succeeded"
    index_id = get_job(client, auth, ijob["id"])["result"]["index_id"]
    res = client.post(f"/v1/indexes/{index_id}/search", headers=auth, json={"item": 0, "k": 5}).json()["results"]
    assert len(res) == 5
    assert all(r["label"] in ("cat", "dog") for r in res)


def test_index_job_fails_clearly_when_the_model_gives_non_finite_embeddings(client, auth, run, dataset, settings):
    from api.core.artifacts import ArtifactStore
    from api.core.db import session_factory
    from tests.api.factories import tenant_id, trained_model

    factory = session_factory(settings.database_url)
    broken = trained_model(
        factory, ArtifactStore(settings.artifacts), tenant_id(factory), dataset["id"], size=16, nan_weights=True
    )
    ijob = submit(client, auth, {"kind": "index", "dataset_id": dataset["id"], "model_id": broken.id})
    assert run(ijob["id"]) == "failed"
    job = get_job(client, auth, ijob["id"])
    assert job["error"]["code"] == "non_finite_embeddings"
    assert "32 images" in job["error"]["message"]
    assert client.get("/v1/indexes", headers=auth).json()["data"] == []
