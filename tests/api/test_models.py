"""The models router: read, list, download, embeddings, classifiers' predictions and the inputs it refuses."""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.api.factories import random_png, tenant_id, trained_classifier, trained_model
from tests.api.live import live_server


def test_a_model_can_be_read_listed_and_downloaded(client, auth, served):
    _, model, _ = served
    assert client.get("/v1/models", headers=auth).json()["data"][0]["id"] == model.id
    body = client.get(f"/v1/models/{model.id}", headers=auth).json()
    assert body["embedding_dim"] == 512
    assert body["method"] == "simclr"
    r = client.get(f"/v1/models/{model.id}/download", headers=auth)
    assert r.status_code == 200
    state = torch.load(io.BytesIO(r.content), weights_only=True)
    assert "state_dict" in state
    assert state["info"]["backbone"] == "resnet18"
    bad = client.get(f"/v1/models/{model.id}/download?format=tflite", headers=auth)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "format"


def test_embeddings_multipart_and_json_agree_and_are_normalised(client, auth, served):
    _, model, _ = served
    files = [("files", ("a.png", random_png(1))), ("files", ("b.png", random_png(2, colour=True)))]
    r = client.post(f"/v1/models/{model.id}/embeddings", headers=auth, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == 512
    assert body["model_id"] == model.id
    assert len(body["data"]) == 2
    vecs = np.array([d["embedding"] for d in body["data"]])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    j = client.post(
        f"/v1/models/{model.id}/embeddings", headers=auth, json={"images": [base64.b64encode(random_png(1)).decode()]}
    ).json()
    np.testing.assert_allclose(j["data"][0]["embedding"], vecs[0], atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "field", "status"),
    [
        ({"files": [("files", ("a.txt", b"not an image"))]}, "files[0]", 422),
        ({"files": [("other", ("a.png", b"x"))]}, "files", 422),
        ({"json": {"images": []}}, "images", 422),
        ({"json": {"images": ["%%%"]}}, "images[0]", 422),
        ({"json": {"images": [123]}}, "images[0]", 422),
        ({"json": {"images": [base64.b64encode(b"nope").decode()]}}, "images[0]", 422),
        ({"content": b"raw", "headers": {"Content-Type": "text/plain"}}, "Content-Type", 415),
    ],
)
def test_bad_embedding_inputs_are_refused_naming_the_field(client, auth, served, kwargs, field, status):
    _, model, _ = served
    headers = {**auth, **kwargs.pop("headers", {})}
    r = client.post(f"/v1/models/{model.id}/embeddings", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["errors"][0]["field"] == field


def test_too_many_images_per_request_are_refused(client, auth, served):
    _, model, _ = served
    n = client.app.state.settings.max_images_per_request + 1
    r = client.post(
        f"/v1/models/{model.id}/embeddings",
        headers=auth,
        json={"images": [base64.b64encode(random_png()).decode()] * n},
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "images"


def test_foreign_and_unknown_models_and_indexes_are_404(client, auth, new_key, served):
    _, model, index = served
    other = new_key("globex")
    for method, path in [
        ("GET", f"/v1/models/{model.id}"),
        ("GET", f"/v1/models/{model.id}/download"),
        ("POST", f"/v1/models/{model.id}/embeddings"),
        ("GET", f"/v1/indexes/{index.id}"),
        ("POST", f"/v1/indexes/{index.id}/search"),
    ]:
        assert client.request(method, path, headers=other, json={"item": 1}).status_code == 404, path
    assert client.get("/v1/models/mdl_nope", headers=auth).status_code == 404
    assert client.post("/v1/indexes/idx_nope/search", headers=auth, json={"item": 1}).status_code == 404


def test_a_model_giving_non_finite_embeddings_is_refused_clearly(client, auth, served, db_session):
    ds, _, _ = served
    broken = trained_model(db_session, client.app.state.store, tenant_id(db_session), ds.id, nan_weights=True)
    r = client.post(f"/v1/models/{broken.id}/embeddings", headers=auth, files=[("files", ("q.png", random_png(1)))])
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "non_finite_embedding"
    assert client.get("/healthz").status_code == 200


# Classifiers -------------------------------------------------------------------------------------------

CLASSES = ["ant", "bee", "cat"]


@pytest.fixture
def classifier(client, db_session, served):
    ds, model, _ = served
    return trained_classifier(db_session, client.app.state.store, ds.tenant_id, ds.id, source_model_id=model.id)


def _predict(client, auth, model_id, query="", images=(1, 2)):
    files = [("files", (f"{i}.png", random_png(i))) for i in images]
    return client.post(f"/v1/models/{model_id}/predictions{query}", headers=auth, files=files)


def test_a_classifier_is_described_with_its_classes_and_source(client, auth, served, classifier):
    _, encoder, _ = served
    body = client.get(f"/v1/models/{classifier.id}", headers=auth).json()
    assert body["type"] == "classifier"
    assert body["classes"] == CLASSES
    assert body["source_model_id"] == encoder.id
    plain = client.get(f"/v1/models/{encoder.id}", headers=auth).json()
    assert (plain["type"], plain["classes"], plain["source_model_id"]) == ("encoder", None, None)


def test_models_can_be_listed_by_type(client, auth, served, classifier):
    _, encoder, _ = served

    def listed(query: str) -> list[str]:
        r = client.get(f"/v1/models{query}", headers=auth)
        assert r.status_code == 200, r.text
        return [m["id"] for m in r.json()["data"]]

    assert listed("?type=classifier") == [classifier.id]
    assert listed("?type=encoder") == [encoder.id]
    assert set(listed("")) == {encoder.id, classifier.id}
    r = client.get("/v1/models?type=other", headers=auth)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "type"


def test_a_classifier_downloads_with_its_head_and_class_names(client, auth, classifier):
    r = client.get(f"/v1/models/{classifier.id}/download", headers=auth)
    assert r.status_code == 200
    state = torch.load(io.BytesIO(r.content), weights_only=True)
    assert state["classes"] == CLASSES
    assert state["head"]["weight"].shape == (3, 512)


def test_predictions_are_probabilities_over_every_class_best_first(client, auth, classifier):
    r = _predict(client, auth, classifier.id, "?top_k=3")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == classifier.id
    assert body["classes"] == CLASSES
    assert [d["index"] for d in body["data"]] == [0, 1]
    for item in body["data"]:
        probabilities = [p["probability"] for p in item["predictions"]]
        assert sorted(p["class"] for p in item["predictions"]) == CLASSES
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert probabilities == sorted(probabilities, reverse=True)


def test_top_k_keeps_the_most_probable_classes_and_defaults_to_at_most_five(client, auth, classifier):
    full = _predict(client, auth, classifier.id, "?top_k=3").json()["data"][0]["predictions"]
    assert _predict(client, auth, classifier.id, "?top_k=2").json()["data"][0]["predictions"] == full[:2]
    assert _predict(client, auth, classifier.id).json()["data"][0]["predictions"] == full  # 3 classes < 5


def test_classes_restrict_the_answer_without_renormalising(client, auth, classifier):
    full = _predict(client, auth, classifier.id, "?top_k=3").json()["data"][0]["predictions"]
    probability = {p["class"]: p["probability"] for p in full}
    some = _predict(client, auth, classifier.id, "?classes=cat&classes=ant&classes=cat").json()["data"][0]
    assert sorted(p["class"] for p in some["predictions"]) == ["ant", "cat"]
    for p in some["predictions"]:
        assert p["probability"] == pytest.approx(probability[p["class"]])
    best = _predict(client, auth, classifier.id, "?classes=cat&classes=ant&top_k=1").json()["data"][0]
    assert best["predictions"] == some["predictions"][:1]


def test_predictions_from_json_match_multipart(client, auth, classifier):
    multipart = _predict(client, auth, classifier.id, images=(4,)).json()
    j = client.post(
        f"/v1/models/{classifier.id}/predictions",
        headers=auth,
        json={"images": [base64.b64encode(random_png(4)).decode()]},
    )
    assert j.status_code == 200, j.text
    expected = multipart["data"][0]["predictions"]
    got = j.json()["data"][0]["predictions"]
    assert [p["class"] for p in got] == [p["class"] for p in expected]
    np.testing.assert_allclose([p["probability"] for p in got], [p["probability"] for p in expected], atol=1e-6)


@pytest.mark.parametrize(
    ("query", "field", "reason"),
    [
        ("?classes=ant&classes=dog", "classes", "unknown class 'dog'; the model's classes: ant, bee, cat"),
        ("?top_k=4", "top_k", "at most 3"),
        ("?classes=ant&top_k=2", "top_k", "at most 1"),
        ("?top_k=0", "top_k", "greater than or equal to 1"),
        ("?top_k=two", "top_k", "integer"),
    ],
)
def test_bad_prediction_queries_are_refused_naming_the_parameter(client, auth, classifier, query, field, reason):
    r = _predict(client, auth, classifier.id, query)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    error = r.json()["errors"][0]
    assert error["field"] == field
    assert reason.lower() in error["reason"].lower()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"files": [("files", ("a.txt", b"not an image"))]}, "files[0]"),
        ({"json": {"images": []}}, "images"),
        ({"json": {"images": ["%%%"]}}, "images[0]"),
    ],
)
def test_bad_prediction_images_are_refused_naming_the_field(client, auth, classifier, kwargs, field):
    r = client.post(f"/v1/models/{classifier.id}/predictions", headers=auth, **kwargs)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field


def test_an_encoder_gives_no_predictions(client, auth, served):
    _, encoder, _ = served
    r = _predict(client, auth, encoder.id)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "not_a_classifier"
    assert body["errors"][0]["field"] == "model_id"
    assert "linear or finetune evaluation" in body["detail"]


def test_foreign_and_unknown_classifiers_are_404(client, auth, new_key, classifier):
    assert _predict(client, new_key("globex"), classifier.id).status_code == 404
    assert _predict(client, auth, "mdl_" + "0" * 24).status_code == 404


def test_a_classifier_also_embeds_images_like_its_encoder(client, auth, classifier):
    files = [("files", ("a.png", random_png(1)))]
    r = client.post(f"/v1/models/{classifier.id}/embeddings", headers=auth, files=files)
    assert r.status_code == 200, r.text
    vector = np.array(r.json()["data"][0]["embedding"])
    assert vector.shape == (512,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)


def test_a_classifier_giving_non_finite_probabilities_is_refused_clearly(client, auth, served, db_session):
    ds, _, _ = served
    broken = trained_classifier(db_session, client.app.state.store, ds.tenant_id, ds.id, nan_head=True)
    r = _predict(client, auth, broken.id)
    assert r.status_code == 422
    assert r.json()["code"] == "non_finite_prediction"


# The event loop stays free while images are decoded and embedded -----------------------------------------


def _blank_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("encoding", ["multipart", "json"])
def test_healthz_answers_while_large_images_are_embedded(app, auth, served, encoding):
    """16 PNGs of 5000×4999 (24 KB each, 25 megapixels decoded) take seconds to embed; meanwhile the event loop
    answers /healthz at once. A latency property of a free event loop, not a speed threshold."""
    _, model, _ = served
    png = _blank_png(5000, 4999)
    if encoding == "multipart":
        body = {"files": [("files", (f"{i}.png", png)) for i in range(16)]}
    else:
        body = {"json": {"images": [base64.b64encode(png).decode()] * 16}}
    answers: dict[str, httpx.Response] = {}
    with live_server(app) as (host, port):
        url = f"http://{host}:{port}"
        with httpx.Client(base_url=url, timeout=300) as http, httpx.Client(base_url=url, timeout=30) as probe:
            assert probe.get("/healthz").status_code == 200  # connected before the clock starts
            embedding = threading.Thread(
                target=lambda: answers.update(r=http.post(f"/v1/models/{model.id}/embeddings", headers=auth, **body))
            )
            embedding.start()
            time.sleep(0.5)  # the request is in, its images being decoded
            probes = []
            while embedding.is_alive() and len(probes) < 5:
                started = time.perf_counter()
                assert probe.get("/healthz").status_code == 200
                probes.append((time.perf_counter() - started, embedding.is_alive()))
                time.sleep(0.1)
            embedding.join()
    assert probes, "the embeddings request ended before /healthz was asked"
    assert probes[0][1], "the embeddings request ended before /healthz answered"
    assert max(seconds for seconds, running in probes if running) < 0.5, probes
    assert answers["r"].status_code == 200, answers["r"].text
    assert len(answers["r"].json()["data"]) == 16


def test_image_requests_past_the_pending_limit_are_503s_to_retry(make_settings, db_session, auth, served):
    """With room for one image request, a second one while the first is served is refused at once, before its
    body is read, and the service answers again once the first is done."""
    from api.main import create_app

    _, model, _ = served
    # The same artifact root as ``served``'s: make_settings puts it under the test's tmp_path.
    app = create_app(make_settings(inference_max_pending=1, inference_concurrency=1), make_session=db_session)
    slow = {"files": [("files", (f"{i}.png", _blank_png(5000, 4999))) for i in range(16)]}
    small = {"files": [("files", ("q.png", random_png(12)))]}
    answers: dict[str, httpx.Response] = {}
    with live_server(app) as (host, port), httpx.Client(base_url=f"http://{host}:{port}", timeout=300) as http:
        first = threading.Thread(
            target=lambda: answers.update(r=http.post(f"/v1/models/{model.id}/embeddings", headers=auth, **slow))
        )
        first.start()
        # Past its key and model look-ups, which share the test's one database connection with the second request.
        deadline = time.monotonic() + 60
        while app.state.serving.pending == 0 and first.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=30) as other:
            refused = other.post(f"/v1/models/{model.id}/embeddings", headers=auth, **small)
            assert first.is_alive(), "the first request ended too soon to overlap"
            first.join()
            again = other.post(f"/v1/models/{model.id}/embeddings", headers=auth, **small)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "overloaded"
    assert answers["r"].status_code == 200
    assert again.status_code == 200, again.text


MEMORY_PROBE = """
import io
from PIL import Image
import torch
from api.serving import fit_request_images
from ssl_core.backbones import build_backbone
from ssl_core.encoder import Embedder, EncoderInfo

def peak_mib():
    status = open("/proc/self/status").read().split("\\n")
    return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) // 1024

buf = io.BytesIO()
Image.new("L", (5000, 4999)).save(buf, format="PNG")
info = EncoderInfo("simclr", "resnet18", "standard", 32, 1, (32, 32), 512)
embedder = Embedder(build_backbone("resnet18", "standard"), info, torch.device("cpu"))
before = peak_mib()
fitted = fit_request_images([buf.getvalue()] * 16, "files", embedder, max_bytes=20 << 20, max_pixels=25_000_000)
print(fitted.shape, peak_mib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak resident size from /proc")
def test_request_images_are_fitted_one_at_a_time():
    """16 images of 25 megapixels (400 MB decoded) are fitted to the model's 32×32 one by one: the process's
    peak memory grows by about one image, not sixteen."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, check=True).stdout
    shape, grown_mib = out.rsplit(" ", 1)
    assert shape == "(16, 1, 32, 32)"
    assert int(grown_mib) < 100, out


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` grayscale pixels and holds none: decoding it would allocate them."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"")), (b"IEND", b"")]
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def _ico() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, format="ICO")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (_png_header(100_000, 100_000), "too many pixels (100000×100000 > 25000000)"),
        (_png_header(5001, 5000), "too many pixels (5001×5000 > 25000000)"),
        (_ico(), "not an image in a supported format (PNG, JPEG, GIF, BMP, TIFF, WebP, PNM or TGA)"),
    ],
    ids=["10 gigapixels", "just over", "ico"],
)
def test_images_are_checked_from_their_header_before_decoding(client, auth, served, db_session, image, reason):
    ds, model, index = served
    classifier = trained_classifier(db_session, client.app.state.store, ds.tenant_id, ds.id, source_model_id=model.id)
    for url, field, form in [
        (f"/v1/models/{model.id}/embeddings", "files[0]", {"files": [("files", ("x", image))]}),
        (f"/v1/models/{classifier.id}/predictions", "files[0]", {"files": [("files", ("x", image))]}),
        (f"/v1/indexes/{index.id}/search", "image", {"files": {"image": ("x", image)}}),
    ]:
        r = client.post(url, headers=auth, **form)
        assert r.status_code == 422, (url, r.text)
        assert r.json()["errors"] == [{"field": field, "reason": reason}], url
    r = client.post(
        f"/v1/models/{model.id}/embeddings", headers=auth, json={"images": [base64.b64encode(image).decode()]}
    )
    assert r.json()["errors"] == [{"field": "images[0]", "reason": reason}]
