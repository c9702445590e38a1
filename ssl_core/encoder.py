"""Trained encoders on disk, and the ``Embedder`` that serves them: an encoder file holds the backbone's
weights and what reproduces the evaluation transform (backbone, stem, image size, channels, stored size)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ssl_core.backbones import Backbone, build_backbone
from ssl_core.data import fit_image
from ssl_core.evaluate import PatchGrid, embed_images

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


def save_encoder(path: Path, backbone: Backbone, info: EncoderInfo, extra: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "format": ENCODER_FORMAT,
            "info": asdict(info),
            "state_dict": backbone.state_dict(),
            "versions": {"torch": str(torch.__version__)},
            **extra,
        },
        tmp,
    )
    tmp.replace(path)


def load_encoder(path: Path, device: torch.device) -> tuple[Backbone, EncoderInfo]:
    state = torch.load(path, map_location=device, weights_only=True)
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

    def embed_pil(self, images: list[Image.Image]) -> np.ndarray:
        """Decoded images → (N, D) float32, each first fitted to the training data's stored size."""
        arr = np.stack([fit_image(im, self.info.channels, self.info.stored_size) for im in images])
        return self.embed_arrays(arr)
