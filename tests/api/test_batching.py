"""Dynamic batching of embedding and prediction requests: concurrent requests to one model share a forward pass,
get the same numbers as one image at a time, and fail only on their own bad images; the batcher's wait bound."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from api.batching import Batcher
from api.core.db import session_factory
from api.main import create_app
from api.serving import fit_request_image
from ssl_core.augment import eval_transform
from ssl_core.encoder import load_classifier, load_encoder
from tests.api.factories import random_png, ready_dataset, tenant_id, trained_classifier, trained_model
from tests.api.live import live_server

CLIENTS = 8


@pytest.fixture
def live(make_settings, clean_database):  # type: ignore[no-untyped-def]
    """The app with a generous batching wait under a real server, committing for real (concurrent requests use
    connections of their own), with an encoder and a classifier of tenant ``acme``: (url, app, headers, model,
    classifier)."""
    from api.core.auth import create_key

    app = create_app(make_settings(batch_wait_ms=500, batch_max_images=64, inference_max_pending=32))
    factory = session_factory(clean_database)
    store = app.state.store
    tenant = tenant_id(factory)
    ds = ready_dataset(factory, store, tenant)
    model = trained_model(factory, store, tenant, ds.id)
    classifier = trained_classifier(factory, store, tenant, ds.id, source_model_id=model.id)
    with factory() as s:
        _, secret = create_key(s, tenant_name="acme")
        s.commit()
    with live_server(app) as (host, port):
        yield f"http://{host}:{port}", app, {"Authorization": f"Bearer {secret}"}, model, classifier


def _batch_sizes(module: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """The batch size of every forward pass of ``module``, recorded by a hook on the real network."""
    sizes: list[int] = []
    handle = module.register_forward_hook(lambda _m, inputs, _out: sizes.append(int(inputs[0].shape[0])))
    return sizes, handle


def _concurrently(url: str, path: str, headers: dict[str, str], bodies: list[list[bytes]]) -> list[httpx.Response]:
    """POST each body (its images as repeated ``files``) at once from its own thread and connection."""
    answers: list[httpx.Response | None] = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        files = [("files", (f"{j}.png", png)) for j, png in enumerate(bodies[i])]
        with httpx.Client(base_url=url, timeout=120) as http:
            http.get("/healthz")  # connected before the barrier
            start.wait()
            answers[i] = http.post(path, headers=headers, files=files)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a is not None for a in answers)
    return answers  # type: ignore[return-value]


def _fitted(png: bytes, embedder: object) -> np.ndarray:
    return fit_request_image(png, "x", embedder, max_bytes=1 << 20, max_pixels=1 << 20)  # type: ignore[arg-type]


def test_concurrent_embeddings_share_a_forward_pass_and_equal_one_image_at_a_time(live):
    url, app, headers, model, _ = live
    path = app.state.store.model_path(model.id)
    served = app.state.serving.embedder(model.id, path)  # loaded before the requests, as the first one would
    sizes, handle = _batch_sizes(served.backbone.net)
    pngs = [random_png(seed) for seed in range(CLIENTS)]
    try:
        answers = _concurrently(url, f"/v1/models/{model.id}/embeddings", headers, [[png] for png in pngs])
    finally:
        handle.remove()
    assert [a.status_code for a in answers] == [200] * CLIENTS, [a.text for a in answers]
    assert sum(sizes) == CLIENTS
    assert len(sizes) < CLIENTS, sizes  # at least two requests went through one forward pass
    # The reference, one image at a time, written out: eval transform, backbone features, L2 normalisation.
    backbone, info = load_encoder(path, torch.device("cpu"))
    for png, answer in zip(pngs, answers, strict=True):
        x = torch.from_numpy(np.array(_fitted(png, served)[None]))
        with torch.inference_mode():
            expected = F.normalize(backbone.features(eval_transform(x, info.image_size)), dim=1)[0].numpy()
        got = np.array(answer.json()["data"][0]["embedding"], dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_concurrent_predictions_share_a_forward_pass_and_equal_one_request_at_a_time(live):
    url, app, headers, _, classifier = live
    path = app.state.store.model_path(classifier.id)
    served = app.state.serving.predictor(classifier.id, path)
    sizes, handle = _batch_sizes(served.backbone.net)
    bodies = [[random_png(10 * i + j) for j in range(i + 1)] for i in range(4)]  # 1, 2, 3 and 4 images
    try:
        answers = _concurrently(url, f"/v1/models/{classifier.id}/predictions?top_k=3", headers, bodies)
    finally:
        handle.remove()
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert sum(sizes) == 10
    assert len(sizes) < 4, sizes
    net, info, classes = load_classifier(path, torch.device("cpu"))
    for body, answer in zip(bodies, answers, strict=True):
        x = torch.from_numpy(np.stack([_fitted(png, served) for png in body]))
        with torch.inference_mode():
            expected = torch.softmax(net(eval_transform(x, info.image_size)), dim=1).numpy()
        data = answer.json()["data"]
        assert [d["index"] for d in data] == list(range(len(body)))
        for row, d in zip(expected, data, strict=True):
            got = {p["class"]: p["probability"] for p in d["predictions"]}
            assert set(got) == set(classes)
            for name, probability in got.items():
                assert probability == pytest.approx(float(row[classes.index(name)]), rel=1e-4, abs=1e-6)


def test_a_bad_image_fails_only_its_own_request(live):
    url, app, headers, model, _ = live
    served = app.state.serving.embedder(model.id, app.state.store.model_path(model.id))
    bodies = [[random_png(1)], [random_png(2), b"not an image"], [random_png(3)], [random_png(4)]]
    answers = _concurrently(url, f"/v1/models/{model.id}/embeddings", headers, bodies)
    assert [a.status_code for a in answers] == [200, 422, 200, 200], [a.text for a in answers]
    assert answers[1].headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in answers[1].json()["errors"]] == ["files[1]"]
    alone = served.embed_arrays(np.stack([_fitted(random_png(s), served) for s in (1, 3, 4)]))
    for answer, expected in zip([answers[0], answers[2], answers[3]], alone, strict=True):
        np.testing.assert_allclose(answer.json()["data"][0]["embedding"], expected, rtol=1e-4, atol=1e-5)


def test_batching_settings_are_validated(make_settings):
    from pydantic import ValidationError

    for bad in ({"batch_max_images": 0}, {"batch_wait_ms": -1}, {"batch_wait_ms": 1001}):
        with pytest.raises(ValidationError) as info:
            make_settings(**bad)
        assert next(iter(bad)) in str(info.value)


# The batcher itself: real arrays through a real (numpy) forward function -------------------------------------


def _doubling_batcher(wait_seconds: float, max_images: int = 64) -> tuple[Batcher, list[int]]:
    sizes: list[int] = []

    async def forward(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        await asyncio.sleep(0)
        return batch * 2

    return Batcher(forward, max_images=max_images, wait_seconds=wait_seconds), sizes


@pytest.fixture
def run() -> Iterator[object]:
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def test_each_request_gets_its_own_rows_back(run):
    batcher, sizes = _doubling_batcher(wait_seconds=0.2)

    async def go() -> list[np.ndarray]:
        parts = [np.full((n, 3), n, dtype=np.float32) for n in (1, 4, 2)]
        return await asyncio.gather(*(batcher.submit(p) for p in parts))

    results = run(go())
    assert sizes == [7]
    for n, result in zip((1, 4, 2), results, strict=True):
        np.testing.assert_array_equal(result, np.full((n, 3), 2 * n, dtype=np.float32))
    assert batcher.idle


def test_a_full_batch_goes_without_waiting_and_the_rest_forms_the_next(run):
    batcher, sizes = _doubling_batcher(wait_seconds=3600, max_images=4)

    async def go() -> None:
        # 3 + 1 fill a batch at once; the wait of an hour would time the test out if it were not cut short. The
        # third request, waiting alone, does not fit and stays behind (cancelled below).
        first = [asyncio.ensure_future(batcher.submit(np.zeros((n, 1)))) for n in (3, 1, 2)]
        await asyncio.wait_for(asyncio.gather(first[0], first[1]), timeout=30)
        assert not first[2].done()
        first[2].cancel()

    run(go())
    assert sizes == [4]


def test_a_request_waits_for_company_only_within_the_bound(run):
    batcher, sizes = _doubling_batcher(wait_seconds=0.05)

    async def go() -> None:
        early = asyncio.ensure_future(batcher.submit(np.zeros((1, 1))))
        await asyncio.sleep(0.5)  # ten times the bound: the first request has gone alone
        assert early.done()
        await batcher.submit(np.zeros((2, 1)))

    run(go())
    assert sizes == [1, 2]


def test_a_request_larger_than_the_batch_runs_alone(run):
    batcher, sizes = _doubling_batcher(wait_seconds=0.1, max_images=4)

    async def go() -> None:
        await asyncio.gather(batcher.submit(np.zeros((9, 1))), batcher.submit(np.zeros((1, 1))))

    run(go())
    assert sizes == [9, 1]


def test_a_failing_forward_pass_fails_its_batch_and_the_batcher_goes_on(run):
    calls = []

    async def forward(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return batch

    batcher = Batcher(forward, max_images=8, wait_seconds=0.05)

    async def go() -> None:
        failed = await asyncio.gather(
            batcher.submit(np.zeros((1, 1))), batcher.submit(np.zeros((1, 1))), return_exceptions=True
        )
        assert [type(f) for f in failed] == [RuntimeError, RuntimeError]
        np.testing.assert_array_equal(await batcher.submit(np.ones((1, 1))), np.ones((1, 1)))

    run(go())
    assert calls == [2, 1]


def test_batcher_arguments_are_checked():
    async def forward(batch: np.ndarray) -> np.ndarray:
        return batch

    with pytest.raises(ValueError, match="max_images"):
        Batcher(forward, max_images=0, wait_seconds=0)
    with pytest.raises(ValueError, match="wait_seconds"):
        Batcher(forward, max_images=1, wait_seconds=-1)


def test_an_unbatched_client_gets_the_same_answer_as_before(make_settings, clean_database):
    """Batching off (a wait of 0, batches of 1) and on give the same embeddings for the same request."""
    factory = session_factory(clean_database)
    answers = []
    for overrides in ({"batch_wait_ms": 0, "batch_max_images": 1}, {"batch_wait_ms": 50}):
        app = create_app(make_settings(**overrides))
        tenant = tenant_id(factory)
        ds = ready_dataset(factory, app.state.store, tenant)
        torch.manual_seed(0)
        model = trained_model(factory, app.state.store, tenant, ds.id)
        from api.core.auth import create_key

        with factory() as s:
            _, secret = create_key(s, tenant_name="acme")
            s.commit()
        with TestClient(app) as client:
            files = [("files", (f"{i}.png", random_png(i))) for i in range(3)]
            r = client.post(
                f"/v1/models/{model.id}/embeddings", headers={"Authorization": f"Bearer {secret}"}, files=files
            )
        assert r.status_code == 200, r.text
        answers.append(np.array([d["embedding"] for d in r.json()["data"]]))
    np.testing.assert_allclose(answers[0], answers[1], rtol=1e-4, atol=1e-5)
