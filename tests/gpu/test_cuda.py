"""The CUDA path: a training step of every method and embeddings on the GPU beside the same weights' on the CPU
(a pretrain job with ``JAGA_DEVICE=cuda``: tests/worker/kinds/test_pretrain_cuda.py). Skipped without CUDA."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_core.backbones import build_backbone
from ssl_core.batches import BatchSource, choose_placement
from ssl_core.config import TrainConfig
from ssl_core.encoder import Embedder, EncoderInfo, load_encoder, save_encoder
from ssl_core.methods.base import DataInfo
from ssl_core.timing import PhaseClock
from ssl_core.train import Trainer, build_method
from tests.ssl_core import test_finetune
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


def test_the_dataset_moves_to_the_gpu_when_it_fits(cuda: torch.device) -> None:
    assert choose_placement(2**20, cuda) == "device"
    assert choose_placement(2**20, cuda, max_resident_bytes=2**19) == "pinned"
    assert choose_placement(2**60, cuda) == "pinned"


@pytest.mark.parametrize("placement", ["device", "pinned"])
def test_gpu_batches_hold_the_chosen_images(placement: str, cuda: torch.device) -> None:
    images = np.random.default_rng(0).integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    source = BatchSource(images, cuda, batch_size=8, placement=placement)  # type: ignore[arg-type]
    orders = [np.sort(np.random.default_rng(i).choice(40, 8, replace=False)) for i in range(6)]
    batches = [source.take(idx) for idx in orders]  # the two pinned buffers are each reused twice
    for idx, (batch, indices) in zip(orders, batches, strict=True):
        assert batch.device.type == "cuda"
        expected = torch.from_numpy(images[idx].astype(np.float32) / 255)
        torch.testing.assert_close(batch.cpu(), expected, rtol=0, atol=1e-7)
        assert indices.cpu().tolist() == idx.tolist()


def test_phase_clock_reads_cuda_events_without_waiting_until_flushed(cuda: torch.device) -> None:
    clock = PhaseClock(cuda, ("matmul", "rest"))
    a = torch.randn(2048, 2048, device=cuda)
    start = clock.mark()
    for _ in range(20):
        a = (a @ a).tanh()
    middle = clock.lap("matmul", start)
    clock.lap("rest", middle)
    seconds = clock.flush()
    assert seconds["matmul"] > 0
    assert seconds["rest"] >= 0


@pytest.mark.parametrize("compile_backbone", [False, True])
def test_pinned_and_compiled_training_runs_on_cuda(compile_backbone: bool, cuda: torch.device) -> None:
    cfg = TrainConfig(method="simclr", backbone="resnet18", stem="small", image_size=32, batch_size=16, epochs=2)
    images = _images(64, 32)
    losses = []
    for placement in ("device", "pinned"):
        torch.manual_seed(0)
        trainer = Trainer(build_method(cfg, {}, DataInfo(64, 3)), images, cfg, cuda, placement=placement,
                          compile_backbone=compile_backbone)  # fmt: skip
        result = trainer.run()
        assert result.steps == 8
        assert result.step_profile is not None
        assert result.step_profile["forward"] > 0
        losses.append(result.final_loss)
    assert math.isfinite(losses[0])
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)


def test_fine_tuning_learns_an_easy_task_on_cuda(cuda: torch.device) -> None:
    test_finetune.test_an_easy_task_is_learned(cuda)  # batches gathered from the GPU-resident training split
