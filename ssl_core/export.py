"""Exports of a trained model for use outside Jaga: safetensors weights, and TorchScript and ONNX modules that take
images and give what the service serves.

The input contract of the TorchScript and ONNX modules: ``images``, float32 (B, C, H, W) in [0, 1], C the model's
channels (1 grayscale, 3 RGB) and (H, W) its stored size, i.e. an image fitted as the service fits one (scaled to
cover H×W keeping its aspect ratio, bilinear, then centre-cropped) and divided by 255. Everything after that is
inside the module: the resize to the training ``image_size`` (bilinear, antialiased), the mean/std normalisation
(grayscale repeated to three channels), the backbone (for tile-trained encoders, the mean of the tile grid's
features) and the final L2 normalisation, so the output equals ``POST /v1/models/{id}/embeddings``. A classifier's
module outputs the softmax probabilities over its classes, as ``POST /v1/models/{id}/predictions`` does.

Every export carries one JSON document describing it (``export_metadata``): in a safetensors file's metadata
header under ``jaga``, in a TorchScript file's ``_extra_files`` as ``jaga.json``, in an ONNX model's
``metadata_props`` under ``jaga``."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.augment import GRAY_MEAN, GRAY_STD, RGB_MEAN, RGB_STD, eval_transform
from ssl_core.backbones import Backbone
from ssl_core.encoder import EncoderInfo
from ssl_core.evaluate import PatchGrid, describe_embedding
from ssl_core.finetune import Classifier

ExportFormat = Literal["state_dict", "safetensors", "torchscript", "onnx"]
FORMATS: tuple[ExportFormat, ...] = ("state_dict", "safetensors", "torchscript", "onnx")
#: The formats that hold a runnable module (and so take a ``target``).
MODULE_FORMATS: tuple[ExportFormat, ...] = ("torchscript", "onnx")
Target = Literal["embedding", "classifier"]
TARGETS: tuple[Target, ...] = ("embedding", "classifier")
EXPORT_VERSION = 1
ONNX_OPSET = 18  # Resize with antialiasing (the eval transform's downscaling) needs 18
INPUT_NAME = "images"


class EmbeddingModel(nn.Module):
    """Images → L2-normalised embeddings, the evaluation transform inside. Shapes: (B, C, H, W) float in [0, 1]
    → (B, D) float32."""

    def __init__(self, backbone: Backbone, image_size: int, patch_grid: PatchGrid | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.image_size = image_size
        self.patch_grid = patch_grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = eval_transform(images, self.image_size)
        features = self.backbone.features(x) if self.patch_grid is None else self.patch_grid.features(self.backbone, x)
        return F.normalize(features.float(), dim=1)


class ProbabilityModel(nn.Module):
    """Images → a classifier's class probabilities, the evaluation transform inside. Shapes: (B, C, H, W) float in
    [0, 1] → (B, classes) float32, rows summing to 1."""

    def __init__(self, classifier: Classifier, image_size: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(eval_transform(images, self.image_size)).float(), dim=1)


def export_metadata(
    info: EncoderInfo, *, model_id: str, format: ExportFormat, target: Target, classes: list[str] | None
) -> dict[str, Any]:
    """The JSON document that describes an export: what the model is, the input it takes and what it outputs.
    ``preprocessing_in_module`` says whether the steps under ``preprocessing`` are inside the file (TorchScript,
    ONNX) or for the user to apply before the backbone (state_dict, safetensors)."""
    gray = info.channels == 1
    height, width = info.stored_size
    in_module = format in MODULE_FORMATS
    output: dict[str, Any]
    if target == "classifier":
        output = {"name": "probabilities", "shape": ["batch", len(classes or [])], "softmax": True}
    else:
        output = {"name": "embeddings", "shape": ["batch", info.embedding_dim], "l2_normalized": True}
    return {
        "jaga_export": EXPORT_VERSION,
        "model_id": model_id,
        "format": format,
        "target": target,
        "method": info.method,
        "backbone": info.backbone,
        "stem": info.stem,
        "patch_size": info.patch_size,
        "image_size": info.image_size,
        "embedding_dim": info.embedding_dim,
        "embedding": describe_embedding(info.patch_grid),
        "patch_grid": None if info.patch_grid is None else asdict(info.patch_grid),
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", info.channels, height, width],
            "range": [0.0, 1.0],
            "color": "grayscale" if gray else "RGB",
            "fit": f"convert to {'L' if gray else 'RGB'}, scale to cover {height}x{width} keeping the aspect ratio "
            "(bilinear), centre-crop, divide by 255",
        },
        "preprocessing_in_module": in_module,
        "preprocessing": {
            "resize": {"size": [info.image_size, info.image_size], "mode": "bilinear", "antialias": True},
            "mean": list(GRAY_MEAN if gray else RGB_MEAN),
            "std": list(GRAY_STD if gray else RGB_STD),
            "repeat_to_3_channels": gray,
            "l2_normalize": target == "embedding",
        },
        "output": output,
        "classes": classes,
    }


def export_module(
    backbone: Backbone, info: EncoderInfo, target: Target, classifier: Classifier | None = None
) -> nn.Module:
    """The module a TorchScript or ONNX export holds, in eval mode: embeddings, or with ``target`` classifier the
    ``classifier``'s probabilities."""
    if target == "classifier":
        if classifier is None:
            raise ValueError("target classifier needs a classifier")
        return ProbabilityModel(classifier, info.image_size).eval()
    return EmbeddingModel(backbone, info.image_size, info.patch_grid).eval()


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``: a reader sees the whole
    file or none. The temporary file is removed if ``write`` fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _example(info: EncoderInfo) -> torch.Tensor:
    # Two images: a batch of one would let tracing and torch.export specialise the batch axis.
    return torch.rand(2, info.channels, *info.stored_size, generator=torch.Generator().manual_seed(0))


def save_safetensors(path: Path, backbone: Backbone, head: nn.Linear | None, metadata: dict[str, Any]) -> None:
    """The backbone's tensors under ``backbone.``, a classifier head's under ``head.`` (the keys of
    ``Classifier.state_dict()``), with ``metadata`` as JSON under ``jaga`` in the header."""
    from safetensors.torch import save_file

    tensors = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    if head is not None:
        tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
    # channels_last weights are not contiguous; safetensors stores plain row-major tensors
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt", "jaga": json.dumps(metadata)})


def save_torchscript(path: Path, module: nn.Module, info: EncoderInfo, metadata: dict[str, Any]) -> None:
    """``module`` traced on example images (any batch size runs), with ``metadata`` in ``jaga.json``."""
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that are constant at this input size
        traced = torch.jit.trace(module, _example(info))
        torch.jit.save(traced, str(path), _extra_files={"jaga.json": json.dumps(metadata)})  # deprecated, not gone


#: ONNX exports trace with torch.export, whose fake tensors, on a machine without a usable CUDA device, first
#: install a stand-in CUDA device guard. torch 2.11 crashes the process (a segfault in
#: ``c10::impl::ensureCUDADeviceGuardSet``) at the next export once the thread that installed it has exited, as
#: the API's threadpool threads do; 2.12 fixed it. So every ONNX export runs on this one thread, which lives as
#: long as the process. Exports are CPU-bound: running them one at a time costs little.
_ONNX_EXPORT_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaga-onnx-export")


def save_onnx(path: Path, module: nn.Module, info: EncoderInfo, metadata: dict[str, Any]) -> None:
    """``module`` exported with a dynamic batch axis (input ``images``, output ``embeddings`` or
    ``probabilities``), with ``metadata`` in ``metadata_props`` under ``jaga``; one self-contained file."""
    import onnx

    def trace() -> onnx.ModelProto:
        batch = torch.export.Dim("batch", min=1)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (_example(info),),
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=[INPUT_NAME],
                output_names=[metadata["output"]["name"]],
                dynamic_shapes={"images": {0: batch}},
                verbose=False,
            )
        assert program is not None
        return program.model_proto

    proto = _ONNX_EXPORT_THREAD.submit(trace).result()
    proto.metadata_props.append(onnx.StringStringEntryProto(key="jaga", value=json.dumps(metadata)))
    onnx.save_model(proto, str(path))
