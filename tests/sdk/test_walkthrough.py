"""The README walk-through in Python (``jaga.client``) and with the ``jaga`` command, against `jaga serve`."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pyarrow.parquet
import pytest
import torch
from PIL import Image

from jaga import WebhookVerificationError, verify_webhook
from jaga.client import AsyncClient, Client
from jaga.errors import JagaError, JobFailedError
from tests.helpers import png_bytes
from tests.receiver import Receiver
from tests.servers import KEY, Server

pytestmark = pytest.mark.e2e
#: A pretrain spec that ends in seconds on a CPU.
TINY = {"epochs": 2, "stem": "standard", "image_size": 16, "batch_size": 16}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("sdk-serve")
    s = Server(root / "data", root / "serve.log", env={"JAGA_WEBHOOK_ALLOW_PRIVATE": "true"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of class folders, as a user has it on disk."""
    root = tmp_path_factory.mktemp("images") / "shapes"
    rng = np.random.default_rng(0)
    for c in ("circle", "square"):
        (root / c).mkdir(parents=True)
        for i in range(24):
            (root / c / f"{i:02d}.png").write_bytes(png_bytes(rng.integers(0, 256, (16, 16), dtype=np.uint8)))
    return root


def test_the_walkthrough_in_python(server: Server, folder: Path):
    with Client(server.url, KEY) as jaga, Receiver() as receiver:
        hook = jaga.webhooks.create(receiver.url, ["job.succeeded"], description="sdk")
        assert hook.secret.startswith("whsec_")
        ds = jaga.datasets.upload(folder)
        assert (ds.status, ds.num_images, ds.name) == ("ready", 48, "shapes")
        assert sorted((c.name, c.count) for c in ds.classes) == [("circle", 24), ("square", 24)]

        job = jaga.jobs.pretrain(dataset_id=ds.id, method="simclr", integrations=["tensorboard"], **TINY)
        bar = io.StringIO()
        job.wait(progress=True, file=bar, poll=0.2)
        assert job.status == "succeeded", job.error
        lines = bar.getvalue().splitlines()
        assert lines[-1].startswith(f"{job.id} pretrain succeeded [")
        assert "100%" in lines[-1]
        assert any("step " in line and "loss " in line for line in lines)
        metrics = job.metrics()
        assert [m["epoch"] for m in metrics if "loss" in m] == [1, 2]
        online = [m["online_knn_accuracy"] for m in metrics if "online_knn_accuracy" in m]
        assert f"kNN {online[-1]:.4g}" in lines[-1]

        model_id = job.result["model_id"]
        receiver.wait_for(lambda rs: any(job.id.encode() in r.body for r in rs))
        payloads = [verify_webhook(hook.secret, r.headers, r.body) for r in receiver.requests]
        assert ("job.succeeded", job.id) in [(p["type"], p["data"]["job"]["id"]) for p in payloads]
        assert ds.ingest_job_id in [p["data"]["job"]["id"] for p in payloads]  # ingestion is a job too
        with pytest.raises(WebhookVerificationError):
            verify_webhook(hook.secret, receiver.requests[0].headers, receiver.requests[0].body + b" ")
        # The receiver answers before the dispatcher records the answer: wait for the record.
        deadline = time.monotonic() + 30
        while (sent := next(d for d in jaga.webhooks.deliveries(hook) if d.job_id == job.id)).status == "pending":
            assert time.monotonic() < deadline, sent
            time.sleep(0.1)
        assert sent.status == "succeeded"
        assert [w.id for w in jaga.webhooks.list()] == [hook.id]
        jaga.webhooks.delete(hook)
        model = jaga.models.get(model_id)
        assert model.embedding_dim == 512
        assert model.method == "simclr"
        assert model_id in [m.id for m in jaga.models.list()]
        paths = sorted(folder.glob("circle/*.png"))[:3]
        by_path = jaga.models.embed(model, paths)
        pil = [Image.open(p) for p in paths]
        arrays = [np.asarray(p) for p in pil]
        assert by_path.shape == (3, 512)
        assert by_path.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(by_path, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(jaga.models.embed(model_id, pil), by_path, atol=1e-6)
        np.testing.assert_allclose(jaga.models.embed(model_id, arrays), by_path, atol=1e-6)
        np.testing.assert_allclose(jaga.models.embed(model_id, paths[0]), by_path[:1], atol=1e-6)
        many = jaga.models.embed(model_id, [arrays[0]] * 70)  # more than one request's worth
        assert many.shape == (70, 512)

        index_job = jaga.jobs.index(dataset_id=ds.id, model_id=model_id).wait()
        found = jaga.indexes.search(index_job.result["index_id"], image=paths[0], k=3)
        assert len(found.results) == 3
        assert found.results[0].filename == "circle/00.png"
        by_item = jaga.indexes.search(index_job.result["index_id"], item=0, k=2).results
        assert len(by_item) == 2
        assert 0 not in [r.item for r in by_item]  # an item is not its own neighbour

        pixels = np.stack([a[None].astype(np.float32) / 255.0 for a in arrays])  # (3, 1, 16, 16) as stored
        onnx_file = jaga.models.download(model_id, folder.parent, format="onnx")
        session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        assert np.abs(session.run(None, {"images": pixels})[0] - by_path).max() <= 1e-4

        embedded = jaga.jobs.embed(model_id=model_id, dataset_id=ds.id).wait()
        table = np.load(embedded.download_embeddings(folder.parent), allow_pickle=False)
        assert len(table) == 48
        rows = {name: i for i, name in enumerate(table["filename"])}
        got = table["embedding"][[rows[f"circle/{p.name}"] for p in paths]]
        assert np.abs(got - by_path).max() <= 1e-4
        assert set(table["label"]) == {"circle", "square"}
        parquet = pyarrow.parquet.read_table(embedded.download_embeddings(folder.parent, format="parquet"))
        assert parquet.column("filename").to_pylist() == table["filename"].tolist()
        embedded.delete_embeddings()
        with pytest.raises(JagaError) as gone:
            embedded.download_embeddings(folder.parent)
        assert gone.value.status == 404

        with tarfile.open(job.download_tensorboard(folder.parent)) as logs:
            assert any("tfevents" in name for name in logs.getnames())

        saved = jaga.models.download(model_id, folder.parent)
        assert saved.name == f"{model_id}.pt"
        assert torch.load(saved, weights_only=True)["info"]["backbone"] == "resnet18"
        assert job.id in [j.id for j in jaga.jobs.list(status="succeeded", kind="pretrain")]

        linear = jaga.jobs.evaluate(dataset_id=ds.id, model_id=model_id, protocol="linear").wait()
        assert 0.0 <= linear.result["top1"] <= 1.0
        predicted = jaga.models.predict(linear.result["model_id"], paths[:2], top_k=2)
        assert [len(p.predictions) for p in predicted.data] == [2, 2]
        assert {c.name for c in predicted.data[0].predictions} == {"circle", "square"}
        tiny = {"epochs": 1, "batch_size": 8}
        student = jaga.jobs.distill(teacher_model_id=model_id, dataset_id=ds.id, objective="similarity", **tiny)
        assert "comparison" in student.wait().result["metrics"]
        child = jaga.jobs.pretrain(dataset_id=ds.id, init_model_id=model_id, preserve="lwf", **tiny).wait()
        lineage = jaga.models.get(child.result["model_id"]).lineage or []
        assert [step.job_id for step in lineage] == [job.id, child.id]
        jaga.models.delete(child.result["model_id"])
        assert child.result["model_id"] not in [m.id for m in jaga.models.list()]
        usage = jaga.usage()
        assert usage.usage.stored_bytes >= ds.source_bytes > 0
        assert usage.quotas.max_active_jobs == 20

        with pytest.raises(JagaError) as refused:
            jaga.jobs.pretrain(dataset_id=ds.id, method="nope")
        assert refused.value.status == 422
        assert refused.value.errors[0]["field"] == "method"
        with pytest.raises(JobFailedError) as cancelled:
            jaga.jobs.pretrain(
                dataset_id=ds.id, epochs=500, **{k: v for k, v in TINY.items() if k != "epochs"}
            ).cancel().wait()
        assert cancelled.value.job.status == "cancelled"


def test_the_async_client(server: Server, folder: Path):
    async def go() -> tuple[str, np.ndarray]:
        async with AsyncClient(server.url, KEY) as jaga:
            ds = await jaga.datasets.upload(folder, name="async")
            job = await (await jaga.jobs.pretrain(dataset_id=ds.id, **TINY)).wait(poll=0.2)
            vectors = await jaga.models.embed(job.result["model_id"], sorted(folder.glob("square/*.png"))[:2])
            found = await jaga.indexes.search(
                (
                    await (await jaga.jobs.submit("index", dataset_id=ds.id, model_id=job.result["model_id"])).wait()
                ).result["index_id"],
                vector=vectors[0],
                k=1,
            )
            assert found.results[0].filename == "square/00.png"
            await jaga.indexes.delete(found.index_id)
            await jaga.models.delete(job.result["model_id"])
            with pytest.raises(JagaError) as gone:
                await jaga.models.get(job.result["model_id"])
            assert gone.value.status == 404
            listed = [j.id async for j in jaga.jobs.list(kind="pretrain")]
            assert job.id in listed
            return job.status, vectors

    status, vectors = asyncio.run(go())
    assert status == "succeeded"
    assert vectors.shape == (2, 512)


def _jaga(
    *args: str, env: dict[str, str], check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    jaga = Path(sys.executable).with_name("jaga")
    done = subprocess.run([str(jaga), *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_the_walkthrough_with_the_cli(server: Server, folder: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAGA_")}
    env["JAGA_CONFIG"] = str(tmp_path / "config.json")
    wrong = _jaga("login", "--url", server.url, "--api-key", "not-a-key", env=env, check=False)
    assert wrong.returncode == 1
    assert "401" in wrong.stderr
    assert not (tmp_path / "config.json").exists()
    _jaga("login", "--url", server.url, "--api-key", KEY, env=env)
    assert json.loads((tmp_path / "config.json").read_text()) == {"url": server.url, "api_key": KEY}

    ds = json.loads(_jaga("datasets", "upload", str(folder), "--name", "cli", "--json", env=env).stdout)
    assert (ds["status"], ds["num_images"], ds["name"]) == ("ready", 48, "cli")
    spec = ["--dataset", ds["id"], "--method", "byol", "--epochs", "2", "-p", "stem=standard", "-p", "image_size=16"]
    job = json.loads(_jaga("jobs", "submit", "pretrain", *spec, "-p", "batch_size=16", "--json", env=env).stdout)
    watched = _jaga("jobs", "watch", job["id"], "--poll", "0.3", env=env)
    assert json.loads(watched.stdout)["model_id"].startswith("mdl_")  # the result, when it succeeded
    assert f"{job['id']} pretrain succeeded" in watched.stderr  # the progress bar (stderr is not a terminal)
    assert all(line.startswith(job["id"]) for line in watched.stderr.splitlines())  # and nothing else
    model_id = json.loads(watched.stdout)["model_id"]

    listed = json.loads(_jaga("jobs", "list", "--status", "succeeded", "--json", env=env).stdout)
    assert job["id"] in [j["id"] for j in listed]
    assert job["id"] in _jaga("jobs", "list", env=env).stdout
    lines = _jaga("jobs", "metrics", job["id"], env=env).stdout.splitlines()
    assert [m["epoch"] for m in map(json.loads, lines) if "loss" in m] == [1, 2]

    linear = ["--model", model_id, "--dataset", ds["id"], "--protocol", "linear", "--watch", "--json"]
    classifier = json.loads(_jaga("jobs", "submit", "evaluate", *linear, env=env).stdout)["result"]["model_id"]
    files = [str(p) for p in sorted(folder.glob("square/*.png"))[:2]]
    predicted = _jaga("models", "predict", classifier, *files, "--top-k", "1", env=env).stdout.splitlines()
    assert [line.split(": ")[0] for line in predicted] == files
    _jaga("models", "embed", model_id, *files, "--out", str(tmp_path / "emb.npy"), env=env)
    vectors = np.load(tmp_path / "emb.npy")
    with Client(server.url, KEY) as jaga:
        np.testing.assert_allclose(vectors, jaga.models.embed(model_id, files), atol=1e-6)
        index_id = jaga.jobs.index(dataset_id=ds["id"], model_id=model_id).wait().result["index_id"]
    found = json.loads(_jaga("search", index_id, files[0], "-k", "3", "--json", env=env).stdout)
    assert next(r["filename"] for r in found["results"]) == "square/00.png"
    assert len(found["results"]) == 3
    assert "square/00.png" in _jaga("search", index_id, files[0], env=env).stdout

    onnx_out = json.loads(
        _jaga("models", "export", model_id, "--format", "onnx", "--json", env=env, cwd=tmp_path).stdout
    )
    assert Path(onnx_out["path"]).name == f"{model_id}.onnx"
    session = onnxruntime.InferenceSession(str(tmp_path / f"{model_id}.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.stack([np.asarray(Image.open(f))[None].astype(np.float32) / 255.0 for f in files])
    assert np.abs(session.run(None, {"images": pixels})[0] - vectors).max() <= 1e-4
    embed = ["--model", model_id, "--dataset", ds["id"], "--watch", "--json"]
    embed_job = json.loads(_jaga("jobs", "submit", "embed", *embed, env=env).stdout)
    assert embed_job["result"]["num_items"] == 48
    _jaga("jobs", "embeddings", embed_job["id"], "--out", str(tmp_path / "all.npy"), env=env)
    assert np.load(tmp_path / "all.npy", allow_pickle=False)["embedding"].shape == (48, 512)

    exported = json.loads(_jaga("models", "export", model_id, "--out", str(tmp_path), "--json", env=env).stdout)
    assert Path(exported["path"]) == tmp_path / f"{model_id}.pt"
    assert exported["bytes"] > 1000

    hook = json.loads(
        _jaga("webhooks", "create", "http://127.0.0.1:9/hook", "--events", "job.failed", "--json", env=env).stdout
    )
    assert hook["secret"].startswith("whsec_")
    assert hook["id"] in _jaga("webhooks", "list", env=env).stdout
    assert json.loads(_jaga("webhooks", "deliveries", hook["id"], "--json", env=env).stdout) == []
    _jaga("webhooks", "delete", hook["id"], env=env)
    assert json.loads(_jaga("webhooks", "list", "--json", env=env).stdout) == []
    bad_event = _jaga("webhooks", "create", "http://127.0.0.1:9/", "--events", "job.exploded", env=env, check=False)
    assert bad_event.returncode == 1
    assert "events" in bad_event.stderr

    refused = _jaga("jobs", "submit", "pretrain", "--dataset", ds["id"], "--method", "nope", env=env, check=False)
    assert refused.returncode == 1
    assert "method" in refused.stderr
    long = ["--dataset", ds["id"], "--epochs", "500", "-p", "stem=standard", "-p", "image_size=16"]
    doomed = json.loads(_jaga("jobs", "submit", "pretrain", *long, "--json", env=env).stdout)
    cancelled = json.loads(_jaga("jobs", "cancel", doomed["id"], "--json", env=env).stdout)
    assert cancelled["status"] in ("cancelled", "cancelling")
    end = _jaga("jobs", "watch", doomed["id"], "--poll", "0.3", env=env, check=False)
    assert end.returncode == 4
    assert f"{doomed['id']} cancelled" in end.stderr

    by_model = json.loads(_jaga("jobs", "list", "--model", model_id, "--kind", "embed", "--json", env=env).stdout)
    assert [j["id"] for j in by_model] == [embed_job["id"]]
    _jaga("models", "delete", model_id, env=env)  # no job that reads it is active any more
    assert json.loads(_jaga("models", "delete", classifier, "--json", env=env).stdout) == {
        "id": classifier,
        "deleted": True,
    }
    gone = _jaga("models", "get", model_id, env=env, check=False)
    assert gone.returncode == 1
    assert "404" in gone.stderr
    stored = json.loads(_jaga("usage", "--json", env=env).stdout)["usage"]["stored_bytes"]
    _jaga("datasets", "delete", ds["id"], env=env)
    assert ds["id"] not in _jaga("datasets", "list", env=env).stdout
    after = json.loads(_jaga("usage", "--json", env=env).stdout)["usage"]["stored_bytes"]
    assert after == stored - ds["source_bytes"]
    assert "active jobs" in _jaga("usage", env=env).stdout
