"""Every registered method: one training step on every backbone family it supports, a tiny overfitting run,
exact resume, and what it refuses. Methods are discovered from the registry, so a new method file is tested
here without edits."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_core.backbones import BACKBONES
from ssl_core.config import TrainConfig
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo
from ssl_core.params import constraints
from ssl_core.train import Callbacks, Trainer, TrainingStopped, build_method

pytestmark = pytest.mark.usefixtures("fp32_training")

#: The tiniest backbone of each family, and an image size it trains on quickly.
TINY_BACKBONES = {
    "resnet": dict(backbone="resnet18", stem="standard", image_size=32),
    "vit": dict(backbone="vit_tiny", image_size=16, patch_size=4),
    "mobile": dict(backbone="mobilenet_v3_small", stem="small", image_size=16),
}


def _cases() -> list[tuple[str, str]]:
    return [(m, fam) for m in METHODS.names() for fam in METHODS.get(m).families]


def _images(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random images (upsampled 4×4 noise): two crops of one image share colours and layout."""
    coarse = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, channels, 4, 4)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return fine.round().clamp(0, 255).to(torch.uint8).numpy()


def _config(method: str, family: str, **overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(
        method=method, batch_size=8, epochs=1, checkpoint_every_steps=1_000_000, **TINY_BACKBONES[family]
    )
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("method", "family"), _cases())
def test_one_step_on_every_supported_backbone(method: str, family: str, cpu: torch.device) -> None:
    cfg = _config(method, family)
    images = _images(8, cfg.image_size)
    m = build_method(cfg, {}, DataInfo(len(images), 3))
    before = {k: v.detach().clone() for k, v in m.encoder().state_dict().items()}
    result = Trainer(m, images, cfg, cpu).run()
    assert result.steps == 1
    assert math.isfinite(result.final_loss)
    assert result.skipped_steps == 0
    after = m.encoder().state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the encoder did not change"
    with torch.no_grad():
        feats = m.encoder().eval().features(torch.randn(2, 3, cfg.image_size, cfg.image_size))
    assert feats.shape == (2, m.encoder().dim)
    assert torch.isfinite(feats).all()


#: Base learning rates (per 256 images) of the overfitting test where the common 2e-3 (6e-5 at batch 8) moves
#: the loss less than its step-to-step noise: SimSiam's negative cosine starts near 0 and, at that rate, stays
#: within ±0.005 for 30 steps (it passed by chance with 2048-wide heads); at 0.1 it falls to about -0.5.
OVERFIT_LEARNING_RATE = {"simsiam": 0.1}


@pytest.mark.parametrize("method", METHODS.names())
def test_overfitting_a_tiny_dataset_lowers_the_loss(method: str, cpu: torch.device) -> None:
    family = METHODS.get(method).families[0]
    cfg = _config(
        method,
        family,
        epochs=30,
        optimizer="adamw",
        learning_rate=OVERFIT_LEARNING_RATE.get(method, 2e-3),
        warmup_fraction=0.0,
    )
    images = _images(8, cfg.image_size)
    losses: list[float] = []

    class Record(Callbacks):
        def on_step(self, progress) -> None:  # type: ignore[no-untyped-def]
            losses.append(progress.loss)

    Trainer(build_method(cfg, {}, DataInfo(len(images), 3)), images, cfg, cpu, callbacks=Record()).run()
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first, f"{method}: loss went from {first:.4f} to {last:.4f}"


@pytest.mark.parametrize("method", METHODS.names())
def test_resume_from_a_checkpoint_is_exact(method: str, tmp_path: Path, cpu: torch.device) -> None:
    """Teachers, queues, memory banks and centres are checkpointed with the model: a resumed run ends
    where the straight run ends."""
    family = METHODS.get(method).families[0]
    cfg = _config(method, family, epochs=2, batch_size=4)
    images = _images(8, cfg.image_size)
    data = DataInfo(len(images), 3)
    straight = build_method(cfg, {}, data)
    Trainer(straight, images, cfg, cpu).run()

    class StopAfter(Callbacks):
        def __init__(self) -> None:
            self.steps = 0

        def on_step(self, progress) -> None:  # type: ignore[no-untyped-def]
            self.steps += 1

        def stop_requested(self):  # type: ignore[no-untyped-def]
            return "shutdown" if self.steps >= 2 else None

    with pytest.raises(TrainingStopped):
        Trainer(build_method(cfg, {}, data), images, cfg, cpu, tmp_path / "c.pt", StopAfter()).run()
    resumed = build_method(cfg, {}, data)
    trainer = Trainer(resumed, images, cfg, cpu, tmp_path / "c.pt")
    assert trainer.load_checkpoint()
    trainer.run()
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=f"{method}: {key} differs after resume")


@pytest.mark.parametrize("method", METHODS.names())
def test_parameters_are_documented_and_bounded(method: str) -> None:
    cls = METHODS.get(method)
    assert cls.category in ("pretext", "contrastive", "non_contrastive", "transformer", "multitask")
    module_doc = __import__(cls.__module__, fromlist=["_"]).__doc__ or ""
    assert cls.summary
    assert re.search(r"(19|20)\d\d", module_doc), f"{method}: cite the paper in the module docstring"
    params = vars(cls.Params).get("__dataclass_params__")
    assert params is not None, f"{method}: decorate {cls.Params.__name__} with @dataclass"
    assert params.frozen, f"{method}: make {cls.Params.__name__} frozen"
    for field in dataclasses.fields(cls.Params):
        assert constraints(field).description, f"{method}.{field.name} has no description"
    with pytest.raises(ValueError, match="no_such_parameter"):
        cls.Params(no_such_parameter=1)


@pytest.mark.parametrize("method", [m for m in METHODS.names() if len(METHODS.get(m).families) < 2])
def test_unsupported_backbones_are_refused(method: str) -> None:
    missing = next(f for f in TINY_BACKBONES if f not in METHODS.get(method).families)
    with pytest.raises(ValueError, match="does not support"):
        build_method(_config(method, missing), {})


def test_every_backbone_family_is_covered() -> None:
    assert {spec.family for spec in map(BACKBONES.get, BACKBONES.names())} == set(TINY_BACKBONES)


def test_only_methods_trained_on_tiles_have_a_patch_grid() -> None:
    def built(name: str):  # type: ignore[no-untyped-def]
        on_resnet = "resnet" in METHODS.get(name).families
        cfg = (
            TrainConfig(method=name, image_size=32, stem="standard")
            if on_resnet
            else TrainConfig(method=name, backbone="vit_tiny", image_size=32, patch_size=4)
        )
        return build_method(cfg, {}, DataInfo(16, 3))

    assert {name for name in METHODS.names() if built(name).patch_grid is not None} == {"jigsaw", "relative_position"}
    image_layout = build_method(TrainConfig(method="jigsaw", image_size=32), {"layout": "image"}, DataInfo(4, 3))
    assert image_layout.patch_grid is None  # the backbone saw whole (shuffled) images
