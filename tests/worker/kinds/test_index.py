"""Index jobs: a searchable index, and a clear failure for a model with non-finite embeddings."""

from __future__ import annotations

from tests.worker.helpers import TINY, get_job, submit


def test_index_job_builds_searchable_index(client, auth, run, dataset, settings):
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY})
    run(job["id"])
    model_id = get_job(client, auth, job["id"])["result"]["model_id"]
    ijob = submit(client, auth, {"kind": "index", "dataset_id": dataset["id"], "model_id": model_id})
    assert run(ijob["id"]) == "succeeded"
    index_id = get_job(client, auth, ijob["id"])["result"]["index_id"]
    res = client.post(f"/v1/indexes/{index_id}/search", headers=auth, json={"item": 0, "k": 5}).json()["results"]
    assert len(res) == 5
    assert all(r["label"] in ("cat", "dog") for r in res)
    # The embeddings went through a file beside the index, removed once it was built.
    assert sorted(p.name for p in (settings.artifacts / "indexes" / index_id).iterdir()) == [
        "index.faiss",
        "index.json",
        "items.json",
    ]


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
    assert list((settings.artifacts / "indexes").iterdir()) == []  # nothing left of the failed build


def test_index_job_is_exact_up_to_its_threshold_and_approximate_past_it(client, auth, run, dataset):
    job = submit(client, auth, {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 1, **TINY})
    run(job["id"])
    model_id = get_job(client, auth, job["id"])["result"]["model_id"]
    exact = submit(client, auth, {"kind": "index", "dataset_id": dataset["id"], "model_id": model_id})
    assert run(exact["id"]) == "succeeded"
    result = get_job(client, auth, exact["id"])["result"]
    assert result["index_type"] == "flat"
    assert result["build"]["recall_at_10"] == 1.0
    assert result["build"]["ann_threshold"] == 100_000  # JAGA_INDEX_ANN_THRESHOLD's default
    spec = {"kind": "index", "dataset_id": dataset["id"], "model_id": model_id, "ann_threshold": 8}
    ijob = submit(client, auth, spec)
    assert run(ijob["id"]) == "succeeded"
    result = get_job(client, auth, ijob["id"])["result"]
    assert result["index_type"] == "ivf"
    build = result["build"]
    assert build["requested"] == "auto"
    assert build["ann_threshold"] == 8
    assert set(build["params"]) == {"nlist", "nprobe"}
    assert build["recall_queries"] == result["num_items"]
    resource = client.get(f"/v1/indexes/{result['index_id']}", headers=auth).json()
    assert resource["index_type"] == "ivf"
    assert resource["build"] == {k: v for k, v in build.items() if k != "version"}
    hits = client.post(f"/v1/indexes/{result['index_id']}/search", headers=auth, json={"item": 0, "k": 5}).json()
    assert 0 not in [h["item"] for h in hits["results"]]
