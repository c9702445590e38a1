"""Trained models on disk, and the ``Embedder`` and ``Predictor`` that serve them. A model file holds the backbone's
weights and what reproduces the evaluation transform (backbone, stem, image size, channels, stored size); a
classifier's file adds its linear head and class names."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_core.backbones import Backbone, build_backbone
from ssl_core.evaluate import PatchGrid, embed_images
from ssl_core.finetune import Classifier, predict_logits

ENCODER_FORMAT = 1


@dataclass(frozen=True)
class EncoderInfo:
    method: str
    backbone: str
    stem: str
    image_size: int
    channels: int  # 1 or 3: images are converted to this before the transform
    stored_size: tuple[int, int]  # (H, W) of the training data as stored
    embedding_dim: int
    patch_size: int | None = None  # ViTs
    patch_grid: PatchGrid | None = None  # encoders of methods trained on tiles embed an image's tiles


def save_encoder(
    path: Path,
    backbone: Backbone,
    info: EncoderInfo,
    extra: dict[str, Any],
    head: torch.nn.Linear | None = None,
    classes: list[str] | None = None,
) -> None:
    """Write atomically; with ``head`` and ``classes`` the file is a classifier's (``load_classifier``)."""
    state: dict[str, Any] = {
        "format": ENCODER_FORMAT,
        "type": "encoder" if head is None else "classifier",
        "info": asdict(info),
        "state_dict": backbone.state_dict(),
        "versions": {"torch": str(torch.__version__)},
        **extra,
    }
    if head is not None:
        if classes is None or len(classes) != head.out_features:
            raise ValueError(f"a classifier needs one class name per output ({head.out_features})")
        state["head"] = {k: v.detach().cpu() for k, v in head.state_dict().items()}
        state["classes"] = list(classes)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_encoder(path: Path, device: torch.device) -> tuple[Backbone, EncoderInfo]:
    """The backbone of an encoder or classifier file, in eval mode on ``device``."""
    return _load(torch.load(path, map_location=device, weights_only=True), device)


def load_classifier(path: Path, device: torch.device) -> tuple[Classifier, EncoderInfo, list[str]]:
    """A classifier file's model (backbone and head, in eval mode), its info and class names. Raises
    ``ValueError`` for an encoder file."""
    state = torch.load(path, map_location=device, weights_only=True)
    if "head" not in state:
        raise ValueError(f"{path} holds an encoder, not a classifier")
    backbone, info = _load(state, device)
    classifier = Classifier(backbone, len(state["classes"]), info.patch_grid)
    classifier.head.load_state_dict(state["head"])
    return classifier.to(device).eval(), info, list(state["classes"])


def _load(state: dict[str, Any], device: torch.device) -> tuple[Backbone, EncoderInfo]:
    info_dict = dict(state["info"])
    info_dict["stored_size"] = tuple(info_dict["stored_size"])
    if info_dict.get("patch_grid") is not None:  # a dict on disk (absent from older files: the whole image)
        info_dict["patch_grid"] = PatchGrid(**info_dict["patch_grid"])
    info = EncoderInfo(**info_dict)
    backbone = build_backbone(info.backbone, info.stem, info.image_size, info.patch_size)  # type: ignore[arg-type]
    backbone.load_state_dict(state["state_dict"])
    backbone.to(device).eval()
    return backbone, info


class Embedder:
    """L2-normalised embeddings from a trained encoder, with the evaluation transform (and, for encoders trained
    on tiles, the patch grid) used in training."""

    def __init__(self, backbone: Backbone, info: EncoderInfo, device: torch.device) -> None:
        self.backbone = backbone
        self.info = info
        self.device = device

    def embed_arrays(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, C, H, W) uint8 → (N, D) float32."""
        return embed_images(
            self.backbone, images, self.info.image_size, self.device, batch_size, self.info.patch_grid
        ).numpy()


class Predictor(Embedder):
    """Class probabilities from a classifier, under the evaluation transform; embeddings from its encoder."""

    def __init__(self, classifier: Classifier, info: EncoderInfo, classes: list[str], device: torch.device) -> None:
        super().__init__(classifier.backbone, info, device)
        self.classifier = classifier
        self.classes = classes

    def predict_arrays(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, C, H, W) uint8 → (N, classes) float32 probabilities."""
        logits = predict_logits(self.classifier, images, self.info.image_size, self.device, batch_size)
        return torch.softmax(logits, dim=1).numpy()
