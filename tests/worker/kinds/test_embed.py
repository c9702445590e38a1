"""Embed jobs: every image of a dataset embedded as the embeddings endpoint embeds it, downloadable as a structured
``.npy`` array or Parquet; cancellation leaves nothing behind."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.helpers import png_bytes
from tests.worker.helpers import get_job, submit


def _model(settings, dataset_id: str, size: int = 16) -> str:
    from api.core.artifacts import ArtifactStore
    from api.core.db import session_factory
    from tests.api.factories import tenant_id, trained_model

    factory = session_factory(settings.database_url)
    return trained_model(factory, ArtifactStore(settings.artifacts), tenant_id(factory), dataset_id, size=size).id


def _stored_images(settings, dataset_id: str) -> np.ndarray:
    from api.core.artifacts import ArtifactStore
    from ssl_core.data import ImageArray

    return np.array(ImageArray.load(ArtifactStore(settings.artifacts).dataset_dir(dataset_id)).images)


def _served(client, auth, model_id: str, images: np.ndarray) -> np.ndarray:
    files = [("files", (f"{i}.png", png_bytes(im[0]))) for i, im in enumerate(images)]
    r = client.post(f"/v1/models/{model_id}/embeddings", headers=auth, files=files)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


@pytest.mark.parametrize("model_size", [16, 12])  # the dataset's stored size, and another the model was trained at
def test_embed_job_embeds_every_image_as_the_endpoint_does(client, auth, run, dataset, settings, model_size):
    model_id = _model(settings, dataset["id"], size=model_size)
    job = submit(client, auth, {"kind": "embed", "model_id": model_id, "dataset_id": dataset["id"], "batch_size": 5})
    assert run(job["id"]) == "succeeded"
    done = get_job(client, auth, job["id"])
    assert done["progress"] == 1.0
    result = done["result"]
    assert result["num_items"] == 32
    assert result["dim"] == 512
    assert result["model_id"] == model_id
    assert result["formats"] == ["npy", "parquet"]
    assert result["images_per_second"] > 0

    r = client.get(f"/v1/jobs/{job['id']}/embeddings", headers=auth)
    assert r.status_code == 200
    assert r.headers["content-disposition"].endswith(f'"{job["id"]}-embeddings.npy"')
    rows = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert rows.dtype.names == ("item", "label", "filename", "embedding")
    assert rows["embedding"].dtype == np.float32
    assert rows["embedding"].shape == (32, 512)
    assert rows["item"].tolist() == list(range(32))
    assert set(rows["label"].tolist()) == {"cat", "dog"}
    assert all(name.endswith(".png") for name in rows["filename"].tolist())
    np.testing.assert_allclose(np.linalg.norm(rows["embedding"], axis=1), 1.0, atol=1e-5)
    some = [0, 7, 31]
    served = _served(client, auth, model_id, _stored_images(settings, dataset["id"])[some])
    assert np.abs(rows["embedding"][some] - served).max() <= 1e-4

    import pyarrow as pa
    import pyarrow.parquet as pq

    r = client.get(f"/v1/jobs/{job['id']}/embeddings?format=parquet", headers=auth)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(r.content))
    assert table.column_names == ["item", "label", "filename", "embedding"]
    embedding_type = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(embedding_type)
    assert (embedding_type.list_size, embedding_type.value_type) == (512, pa.float32())
    assert table.column("item").to_pylist() == rows["item"].tolist()
    assert table.column("label").to_pylist() == rows["label"].tolist()
    assert table.column("filename").to_pylist() == rows["filename"].tolist()
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), dtype=np.float32), rows["embedding"])
    again = client.get(f"/v1/jobs/{job['id']}/embeddings?format=parquet", headers=auth)
    assert again.content == r.content  # converted once, then kept
    stored = sorted(p.name for p in (settings.artifacts / "embeddings" / job["id"]).iterdir())
    assert stored == ["embeddings.npy", "embeddings.parquet"]


def test_cancelling_an_embed_job_stops_it_and_leaves_no_file(client, auth, run, dataset, settings, monkeypatch):
    from worker.context import JobContext
    from worker.kinds import embed

    model_id = _model(settings, dataset["id"])
    job = submit(client, auth, {"kind": "embed", "model_id": model_id, "dataset_id": dataset["id"], "batch_size": 4})
    calls = []
    embed_arrays = embed.Embedder.embed_arrays

    def cancel_during_the_first_batch(self, images, batch_size=256):
        if not calls:
            assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()["status"] == "cancelling"
        calls.append(len(images))
        return embed_arrays(self, images, batch_size)

    monkeypatch.setattr(embed.Embedder, "embed_arrays", cancel_during_the_first_batch)
    monkeypatch.setattr(JobContext, "CANCEL_POLL_SECONDS", 0.0)
    assert run(job["id"]) == "cancelled"
    assert calls == [4]
    assert not (settings.artifacts / "embeddings" / job["id"]).exists()
    r = client.get(f"/v1/jobs/{job['id']}/embeddings", headers=auth)
    assert r.status_code == 409
    assert r.json()["errors"][0]["field"] == "job_id"
