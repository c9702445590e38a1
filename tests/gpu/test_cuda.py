"""The CUDA path: a training step of every method and embeddings on the GPU beside the same weights' on the CPU
(a pretrain job with ``JAGA_DEVICE=cuda``: tests/worker/kinds/test_pretrain_cuda.py). Skipped without CUDA."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_core.backbones import build_backbone
from ssl_core.config import TrainConfig
from ssl_core.encoder import Embedder, EncoderInfo, load_encoder, save_encoder
from ssl_core.methods.base import DataInfo
from ssl_core.train import Trainer, build_method
from tests.ssl_core.methods.test_every_method import TINY_BACKBONES, _cases, _images

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(("method", "family"), _cases())
def test_one_step_of_every_method_on_cuda(method: str, family: str, cuda: torch.device) -> None:
    cfg = TrainConfig(method=method, batch_size=8, epochs=1, checkpoint_every_steps=1_000_000, **TINY_BACKBONES[family])
    images = _images(8, cfg.image_size)
    m = build_method(cfg, {}, DataInfo(len(images), 3))
    before = {k: v.detach().clone() for k, v in m.encoder().state_dict().items()}
    result = Trainer(m, images, cfg, cuda).run()
    assert result.steps == 1
    assert math.isfinite(result.final_loss)
    assert result.skipped_steps == 0
    after = m.encoder().state_dict()
    assert all(v.device.type == "cuda" for v in after.values())
    assert any(not torch.equal(before[k].cpu(), after[k].cpu()) for k in before if after[k].is_floating_point())


@pytest.mark.parametrize(
    ("backbone", "stem", "patch_size"),
    [("resnet18", "small", None), ("mobilenet_v3_small", "small", None), ("vit_tiny", "standard", 4)],
)
def test_gpu_embeddings_match_the_cpus(
    backbone: str, stem: str, patch_size: int | None, tmp_path: Path, cuda: torch.device
) -> None:
    torch.manual_seed(0)
    net = build_backbone(backbone, stem, image_size=32, patch_size=patch_size)  # type: ignore[arg-type]
    info = EncoderInfo("simclr", backbone, stem, 32, 3, (32, 32), net.dim, patch_size)
    save_encoder(tmp_path / "model.pt", net, info, {})
    images = np.random.default_rng(0).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    on_cpu = Embedder(*load_encoder(tmp_path / "model.pt", torch.device("cpu")), torch.device("cpu"))
    on_gpu = Embedder(*load_encoder(tmp_path / "model.pt", cuda), cuda)
    a, b = on_cpu.embed_arrays(images), on_gpu.embed_arrays(images)
    cosine = (a * b).sum(axis=1)  # both are L2-normalised
    assert cosine.min() >= 0.999, cosine.min()
