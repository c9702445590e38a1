"""Model downloads in every format, each loaded with its own library (not Jaga's code) and run on the images the
service embeds: the outputs match the service's embeddings and predictions."""

from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.api.factories import ready_dataset, tenant_id, trained_classifier, trained_model

SIZE = 12  # the stored size of the factories' models; they resize to 16 px inside
CLASSES = ["ant", "bee", "cat"]
TOLERANCE = 1e-4


def _images(channels: int, n: int = 3) -> list[np.ndarray]:
    """Images at the models' stored size, (H, W) or (H, W, 3) uint8: fitting them is only a conversion."""
    rng = np.random.default_rng(7)
    shape = (SIZE, SIZE) if channels == 1 else (SIZE, SIZE, 3)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _input(images: list[np.ndarray]) -> np.ndarray:
    """The export's input contract, computed without Jaga: float32 (B, C, H, W) in [0, 1]."""
    batch = np.stack([im[None] if im.ndim == 2 else im.transpose(2, 0, 1) for im in images])
    return batch.astype(np.float32) / 255


def _served(client, auth, model_id: str, images: list[np.ndarray]) -> np.ndarray:
    files = [("files", (f"{i}.png", _png(im))) for i, im in enumerate(images)]
    r = client.post(f"/v1/models/{model_id}/embeddings", headers=auth, files=files)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def _predicted(client, auth, model_id: str, images: list[np.ndarray]) -> np.ndarray:
    files = [("files", (f"{i}.png", _png(im))) for i, im in enumerate(images)]
    r = client.post(f"/v1/models/{model_id}/predictions?top_k={len(CLASSES)}", headers=auth, files=files)
    assert r.status_code == 200, r.text
    return np.array(
        [[{p["class"]: p["probability"] for p in d["predictions"]}[c] for c in CLASSES] for d in r.json()["data"]]
    )


def _download(client, auth, model_id: str, query: str, tmp_path, name: str):
    r = client.get(f"/v1/models/{model_id}/download?{query}", headers=auth)
    assert r.status_code == 200, r.text
    path = tmp_path / name
    path.write_bytes(r.content)
    return path, json.loads(r.headers["x-jaga-export"])


def _run_onnx(path, x: np.ndarray) -> tuple[np.ndarray, dict]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert isinstance(session.get_inputs()[0].shape[0], str)  # the batch axis is dynamic
    meta = json.loads(session.get_modelmeta().custom_metadata_map["jaga"])
    return session.run(None, {"images": x})[0], meta


def _run_torchscript(path, x: np.ndarray) -> tuple[np.ndarray, dict]:
    extra = {"jaga.json": ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy(), json.loads(extra["jaga.json"])


@pytest.fixture
def rows(client, db_session):
    store = client.app.state.store
    tenant = tenant_id(db_session)
    ds = ready_dataset(db_session, store, tenant)
    return store, tenant, ds


@pytest.mark.parametrize(
    ("backbone", "channels", "fmt"),
    [
        ("resnet18", 1, "torchscript"),
        ("resnet18", 1, "onnx"),
        ("vit_tiny", 1, "torchscript"),
        ("vit_tiny", 1, "onnx"),
        ("mobilenet_v3_small", 3, "torchscript"),
        ("mobilenet_v3_small", 3, "onnx"),
    ],
)
def test_module_exports_of_an_encoder_give_the_served_embeddings(
    client, auth, db_session, rows, tmp_path, backbone, channels, fmt
):
    store, tenant, ds = rows
    model = trained_model(db_session, store, tenant, ds.id, backbone_name=backbone, channels=channels)
    images = _images(channels, n=3)  # a batch size other than the one traced (2)
    path, header = _download(client, auth, model.id, f"format={fmt}", tmp_path, f"m.{fmt}")
    run = _run_onnx if fmt == "onnx" else _run_torchscript
    out, meta = run(path, _input(images))
    served = _served(client, auth, model.id, images)
    assert out.shape == served.shape
    assert np.abs(out - served).max() <= TOLERANCE
    assert meta == {**header, "classes": None}
    assert meta["target"] == "embedding"
    assert meta["input"]["shape"] == ["batch", channels, SIZE, SIZE]
    assert meta["output"] == {"name": "embeddings", "shape": ["batch", model.embedding_dim], "l2_normalized": True}
    assert meta["preprocessing_in_module"] is True


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_module_exports_of_a_classifier_give_its_predictions_or_its_embeddings(
    client, auth, db_session, rows, tmp_path, fmt
):
    store, tenant, ds = rows
    classifier = trained_classifier(db_session, store, tenant, ds.id, classes=tuple(CLASSES))
    images = _images(1)
    run = _run_onnx if fmt == "onnx" else _run_torchscript
    path, _ = _download(client, auth, classifier.id, f"format={fmt}", tmp_path, f"c.{fmt}")
    probabilities, meta = run(path, _input(images))
    assert np.abs(probabilities - _predicted(client, auth, classifier.id, images)).max() <= TOLERANCE
    assert meta["target"] == "classifier"
    assert meta["classes"] == CLASSES
    assert meta["output"]["name"] == "probabilities"
    path, _ = _download(client, auth, classifier.id, f"format={fmt}&target=embedding", tmp_path, f"e.{fmt}")
    embeddings, meta = run(path, _input(images))
    assert np.abs(embeddings - _served(client, auth, classifier.id, images)).max() <= TOLERANCE
    assert meta["target"] == "embedding"


def _torchvision_resnet18(tensors: dict[str, torch.Tensor], prefix: str) -> torch.nn.Module:
    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    net.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
    return net.eval()


def _preprocess(x: np.ndarray, meta: dict) -> torch.Tensor:
    """The metadata's preprocessing, applied by hand."""
    pre = meta["preprocessing"]
    t = torch.from_numpy(x)
    t = F.interpolate(t, size=tuple(pre["resize"]["size"]), mode="bilinear", antialias=True, align_corners=False)
    t = (t - torch.tensor(pre["mean"]).view(1, -1, 1, 1)) / torch.tensor(pre["std"]).view(1, -1, 1, 1)
    return t.repeat(1, 3, 1, 1) if pre["repeat_to_3_channels"] else t


def test_safetensors_weights_rebuild_the_served_encoder_and_classifier_in_torchvision(
    client, auth, db_session, rows, tmp_path
):
    store, tenant, ds = rows
    images = _images(1)
    x = _input(images)
    model = trained_model(db_session, store, tenant, ds.id)
    path, header = _download(client, auth, model.id, "format=safetensors", tmp_path, "m.safetensors")
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["jaga"])
    assert meta == {**header, "classes": None}
    assert meta["preprocessing_in_module"] is False
    state = torch.load(io.BytesIO(client.get(f"/v1/models/{model.id}/download", headers=auth).content))
    assert set(tensors) == {f"backbone.{k}" for k in state["state_dict"]}
    for k, v in state["state_dict"].items():
        assert torch.equal(tensors[f"backbone.{k}"], v)
    with torch.no_grad():
        embeddings = F.normalize(_torchvision_resnet18(tensors, "backbone.net.")(_preprocess(x, meta)), dim=1)
    assert np.abs(embeddings.numpy() - _served(client, auth, model.id, images)).max() <= TOLERANCE

    classifier = trained_classifier(db_session, store, tenant, ds.id, classes=tuple(CLASSES))
    path, _ = _download(client, auth, classifier.id, "format=safetensors", tmp_path, "c.safetensors")
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["jaga"])
    assert meta["classes"] == CLASSES
    head = torch.nn.Linear(512, len(CLASSES))
    head.load_state_dict({"weight": tensors["head.weight"], "bias": tensors["head.bias"]})
    with torch.no_grad():
        features = _torchvision_resnet18(tensors, "backbone.net.")(_preprocess(x, meta))
        probabilities = torch.softmax(head(features), dim=1).numpy()
    assert np.abs(probabilities - _predicted(client, auth, classifier.id, images)).max() <= TOLERANCE


def test_the_state_dict_download_states_its_metadata_too(client, auth, db_session, rows):
    store, tenant, ds = rows
    model = trained_model(db_session, store, tenant, ds.id)
    r = client.get(f"/v1/models/{model.id}/download?format=state_dict", headers=auth)
    assert r.status_code == 200
    assert r.headers["content-disposition"].endswith(f'"{model.id}.pt"')
    meta = json.loads(r.headers["x-jaga-export"])
    assert (meta["format"], meta["target"], meta["preprocessing_in_module"]) == ("state_dict", "embedding", False)
    assert meta["input"]["shape"] == ["batch", 1, SIZE, SIZE]
    assert list(torch.load(io.BytesIO(r.content), weights_only=True)["info"]["stored_size"]) == [SIZE, SIZE]


def test_an_export_is_built_once_and_kept_beside_the_model(client, auth, db_session, rows, monkeypatch):
    store, tenant, ds = rows
    model = trained_model(db_session, store, tenant, ds.id)
    first = client.get(f"/v1/models/{model.id}/download?format=torchscript", headers=auth)
    assert first.status_code == 200
    assert first.headers["content-disposition"].endswith(f'"{model.id}-embedding.torchscript.pt"')
    exports = store.export_path(model.id, "x").parent
    assert sorted(p.name for p in exports.iterdir()) == ["embedding.torchscript.json", "embedding.torchscript.pt"]

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr("ssl_core.export.save_torchscript", no_rebuild)
    again = client.get(f"/v1/models/{model.id}/download?format=torchscript", headers=auth)
    assert again.content == first.content
    assert again.headers["x-jaga-export"] == first.headers["x-jaga-export"]


def test_an_export_that_fails_is_a_422_naming_format_and_leaves_no_file(client, auth, db_session, rows, monkeypatch):
    store, tenant, ds = rows
    model = trained_model(db_session, store, tenant, ds.id)

    def broken(path, *args):
        path.write_bytes(b"half")
        raise RuntimeError("operator not supported")

    monkeypatch.setattr("ssl_core.export.save_onnx", broken)
    r = client.get(f"/v1/models/{model.id}/download?format=onnx", headers=auth)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "export_failed"
    assert r.json()["errors"][0]["field"] == "format"
    assert "operator not supported" in r.json()["detail"]
    exports = store.export_path(model.id, "x").parent
    assert [p.name for p in exports.iterdir() if not p.name.endswith(".json")] == []


@pytest.mark.parametrize(
    ("query", "field", "reason"),
    [
        ("format=tflite", "format", "valid: state_dict, safetensors, torchscript, onnx"),
        ("format=safetensors&target=embedding", "target", "applies to torchscript and onnx"),
        ("target=embedding", "target", "applies to torchscript and onnx"),
        ("format=onnx&target=classifier", "target", "is an encoder"),
        ("format=onnx&target=logits", "target", "valid: embedding, classifier"),
    ],
)
def test_bad_download_requests_are_refused_naming_the_parameter(client, auth, db_session, rows, query, field, reason):
    store, tenant, ds = rows
    model = trained_model(db_session, store, tenant, ds.id)
    r = client.get(f"/v1/models/{model.id}/download?{query}", headers=auth)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == field
    assert reason in r.json()["errors"][0]["reason"]


def test_the_openapi_document_lists_the_formats_and_targets(client):
    params = client.get("/openapi.json").json()["paths"]["/v1/models/{model_id}/download"]["get"]["parameters"]
    schemas = {p["name"]: p["schema"] for p in params}
    assert schemas["format"]["enum"] == ["state_dict", "safetensors", "torchscript", "onnx"]
    assert "X-Jaga-Export" in str(client.get("/openapi.json").json()["paths"]["/v1/models/{model_id}/download"])
