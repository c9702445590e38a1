"""The training loop on the CPU: SimCLR steps, overfitting, exact resume, stop requests, time budgets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_core.config import TrainConfig
from ssl_core.device import supports_bf16
from ssl_core.methods.base import OptimizerDefaults, StepOutput
from ssl_core.train import (
    BudgetPlanner,
    Callbacks,
    CheckpointMismatch,
    Progress,
    Trainer,
    TrainingStopped,
    build_method,
    resolve_optimizer,
)

pytestmark = pytest.mark.usefixtures("fp32_training")


# A projection head small enough that a step is dominated by the backbone.
TINY_HEAD = {"hidden_dim": 32, "projection_dim": 16}


class Recorder(Callbacks):
    """Records progress; asks the loop to stop with ``reason`` once ``stop_after`` steps are done."""

    def __init__(self, stop_after: int | None = None, reason: Literal["cancel", "shutdown"] = "cancel") -> None:
        self.stop_after = stop_after
        self.reason = reason
        self.steps: list[Progress] = []
        self.epochs: list[int] = []

    def on_step(self, progress: Progress) -> None:
        self.steps.append(progress)

    def on_epoch_end(self, epoch: int, progress: Progress) -> None:
        self.epochs.append(epoch)

    def stop_requested(self) -> Literal["cancel", "shutdown"] | None:
        if self.stop_after is not None and len(self.steps) >= self.stop_after:
            return self.reason
        return None


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _smooth_images(n: int, seed: int) -> np.ndarray:
    """(n, 3, 16, 16) uint8 images upsampled from 3×3 noise: two crops of one image share its colours, so
    instance discrimination is learnable in a few steps (crops of pixel noise share nothing)."""
    coarse = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, 3, 3)).astype(np.float32))
    fine = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    return fine.round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.mark.parametrize(("stem", "image_size"), [("standard", 16), ("small", 8)])
def test_one_step_runs_and_gives_a_finite_loss(
    stem: str,
    image_size: int,
    make_config: Callable[..., TrainConfig],
    make_images: Callable[..., np.ndarray],
    cpu: torch.device,
) -> None:
    cfg = make_config(stem=stem, image_size=image_size)
    method = build_method(cfg, TINY_HEAD)
    before = _weights(method)
    result = Trainer(method, make_images(8), cfg, cpu).run()
    assert result.steps == 1
    assert result.epochs == 1.0
    assert math.isfinite(result.final_loss)
    assert result.final_loss > 0
    after = method.state_dict()
    assert not torch.equal(before["backbone.net.conv1.weight"], after["backbone.net.conv1.weight"])
    assert not method.training  # run() leaves the model in eval mode


def test_overfitting_one_batch_lowers_the_loss(make_config: Callable[..., TrainConfig], cpu: torch.device) -> None:
    images = _smooth_images(8, seed=0)
    cfg = make_config(epochs=20, optimizer="adamw", learning_rate=0.03, warmup_fraction=0.0)
    method = build_method(cfg, {**TINY_HEAD, "crop_min_scale": 0.5, "blur_p": 0.0, "solarize_p": 0.0})
    batch = torch.from_numpy(images).float() / 255
    indices = torch.arange(len(images))

    def loss_on_fixed_views() -> float:
        """Mean loss over three fixed augmentation seeds (batch-norm in training mode, as when training)."""
        method.train()
        with torch.no_grad():
            return float(
                np.mean(
                    [
                        method.training_step(batch, indices, torch.Generator().manual_seed(s)).loss.item()
                        for s in range(3)
                    ]
                )
            )

    before = loss_on_fixed_views()
    result = Trainer(method, images, cfg, cpu).run()
    after = loss_on_fixed_views()
    assert result.steps == 20
    assert after < 0.9 * before
    # Below log(2B - 1), the loss when all 16 views collapse to one point: the views were told apart.
    assert after < math.log(15) - 0.2


def test_epochs_schedule_and_callbacks(
    make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    cfg = make_config(epochs=3, batch_size=4, learning_rate=1.0, warmup_fraction=0.34)
    recorder = Recorder()
    trainer = Trainer(build_method(cfg, TINY_HEAD), make_images(10), cfg, cpu, callbacks=recorder)
    assert trainer.steps_per_epoch == 2
    assert trainer.total_steps == 6
    assert trainer.peak_lr == pytest.approx(1.0 * 4 / 256)
    result = trainer.run()
    assert result.steps == 6
    assert result.epochs == 3.0
    assert [p.step for p in recorder.steps] == [1, 2, 3, 4, 5, 6]
    assert all(p.total_steps == 6 for p in recorder.steps)
    assert recorder.steps[-1].fraction == 1.0
    assert recorder.steps[-1].eta_seconds == 0
    np.testing.assert_allclose([p.lr for p in recorder.steps], trainer.lr_schedule)
    assert max(p.lr for p in recorder.steps) == pytest.approx(trainer.peak_lr)
    assert len(recorder.epochs) == 3
    assert recorder.epochs == sorted(recorder.epochs)


def test_refuses_fewer_than_two_images(
    make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    cfg = make_config()
    with pytest.raises(ValueError, match="at least 2 images"):
        Trainer(build_method(cfg, TINY_HEAD), make_images(1), cfg, cpu)


def test_non_finite_loss_stops_training(
    make_config: Callable[..., TrainConfig],
    make_images: Callable[..., np.ndarray],
    cpu: torch.device,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = make_config()
    method = build_method(cfg, TINY_HEAD)
    monkeypatch.setattr(
        method,
        "training_step",
        lambda images, indices, generator: StepOutput(torch.tensor(float("nan"), requires_grad=True)),
    )
    with pytest.raises(FloatingPointError, match="step 0"):
        Trainer(method, make_images(8), cfg, cpu).run()


@pytest.mark.usefixtures("fp32_training")
def test_the_step_profile_accounts_for_the_run(
    make_config: Callable[..., TrainConfig],
    make_images: Callable[..., np.ndarray],
    cpu: torch.device,
) -> None:
    cfg = make_config(epochs=2)
    result = Trainer(build_method(cfg, TINY_HEAD), make_images(16), cfg, cpu).run()
    profile = result.step_profile
    assert profile is not None
    assert list(profile) == ["data", "forward", "backward", "optimizer", "monitor"]
    assert all(profile[p] > 0 for p in ("data", "forward", "backward", "optimizer"))
    assert profile["monitor"] == 0  # no monitor was given
    # The phases cover the loop but for its bookkeeping: never more than the run, most of it.
    assert 0.5 * result.seconds < sum(profile.values()) <= result.seconds


def test_one_step_under_bf16_autocast(
    make_config: Callable[..., TrainConfig],
    make_images: Callable[..., np.ndarray],
    cpu: torch.device,
) -> None:
    cfg = make_config(image_size=32, precision="bf16")
    trainer = Trainer(build_method(cfg, TINY_HEAD), make_images(8, size=32), cfg, cpu)
    assert trainer.autocast_dtype == torch.bfloat16
    assert math.isfinite(trainer.run().final_loss)


def _nan_gradient_at(trainer: Trainer, steps: set[int] | None) -> None:
    """Make one weight's gradient NaN on the given steps (on every step if ``steps`` is None)."""
    param = next(p for p in trainer.method.parameters() if p.ndim == 4)
    param.register_hook(lambda g: torch.full_like(g, math.nan) if steps is None or trainer.step in steps else g)


def test_a_step_with_non_finite_gradients_is_skipped(
    make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    cfg = make_config(epochs=3, batch_size=4)
    snapshots: list[tuple[dict[str, torch.Tensor], dict]] = []

    class Snapshot(Callbacks):
        def on_step(self, progress: Progress) -> None:
            optimizer_state = {i: s["momentum_buffer"].clone() for i, s in enumerate(trainer.optimizer.state.values())}
            snapshots.append((_weights(trainer.method), optimizer_state))

    trainer = Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu, callbacks=Snapshot())
    _nan_gradient_at(trainer, {2})
    result = trainer.run()
    assert result.steps == 6
    assert result.skipped_steps == 1
    assert trainer.skipped_steps == 1
    (before, opt_before), (after, opt_after), (later, _) = snapshots[1], snapshots[2], snapshots[3]
    # The skipped step (index 2) changed neither the weights nor the optimiser's momentum...
    assert all(torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point() and "running" not in k)
    assert all(torch.equal(opt_before[i], opt_after[i]) for i in opt_before)
    # ...and training went on afterwards with finite weights.
    assert any(not torch.equal(after[k], later[k]) for k in after)
    assert all(torch.isfinite(v).all() for v in later.values() if v.is_floating_point())


def test_gradients_non_finite_for_too_long_fail_the_run(
    make_config: Callable[..., TrainConfig],
    make_images: Callable[..., np.ndarray],
    cpu: torch.device,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ssl_core.train.MAX_SKIPPED_IN_A_ROW", 3)
    cfg = make_config(epochs=4, batch_size=4)
    trainer = Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu)
    _nan_gradient_at(trainer, None)
    with pytest.raises(FloatingPointError, match="3 steps in a row"):
        trainer.run()
    assert trainer.step == 2  # the third skipped step raised before it was counted as taken


def test_skipped_steps_survive_a_resume(
    tmp_path: Path, make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    cfg = make_config(epochs=2, batch_size=4)
    images = make_images(8)
    first = Trainer(
        build_method(cfg, TINY_HEAD), images, cfg, cpu, tmp_path / "ckpt.pt", Recorder(stop_after=2, reason="shutdown")
    )
    _nan_gradient_at(first, {0})
    with pytest.raises(TrainingStopped):
        first.run()
    second = Trainer(build_method(cfg, TINY_HEAD), images, cfg, cpu, tmp_path / "ckpt.pt")
    assert second.load_checkpoint()
    assert second.skipped_steps == 1
    assert second.run().skipped_steps == 1


def test_non_finite_weights_after_training_fail_the_run(
    make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    cfg = make_config()

    class Poison(Callbacks):
        def on_step(self, progress: Progress) -> None:
            with torch.no_grad():
                trainer.method.backbone.net.layer4[0].conv1.weight[0, 0, 0, 0] = math.inf

    trainer = Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu, callbacks=Poison())
    with pytest.raises(FloatingPointError, match=r"layer4\.0\.conv1\.weight"):
        trainer.run()


def test_one_pixel_feature_maps_train_in_fp32(
    make_config: Callable[..., TrainConfig],
    make_images: Callable[..., np.ndarray],
    cpu: torch.device,
) -> None:
    cfg = make_config(image_size=16, stem="standard", precision="bf16")
    assert Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu).autocast_dtype is None


@pytest.mark.skipif(not supports_bf16(torch.device("cpu")), reason="needs a CPU with bf16 support")
def test_training_on_one_pixel_feature_maps_keeps_finite_weights(
    make_config: Callable[..., TrainConfig],
    make_images: Callable[..., np.ndarray],
    cpu: torch.device,
) -> None:
    """Regression: at 16 px a standard-stem ResNet's layer4 sees 1x1 maps, where oneDNN's bf16 convolution
    backward returns NaN for padding-only kernel taps when the memory it reuses held NaN (under bf16 this
    test fails nearly every run). Here memory is poisoned around that convolution on every step."""
    torch.set_num_threads(2)  # as a worker runs (the one_thread fixture restores the setting)

    def poison_allocator(*_: object) -> None:  # leave NaN in freed memory the next kernel may reuse
        junk = [
            torch.full((1 << n,), math.nan, dtype=dtype)
            for n in range(10, 23, 2)
            for dtype in (torch.float32, torch.bfloat16)
        ]
        del junk

    cfg = make_config(epochs=8, batch_size=8, image_size=16, stem="standard", precision="bf16")
    trainer = Trainer(build_method(cfg, TINY_HEAD), make_images(16), cfg, cpu)
    conv = trainer.method.backbone.net.layer4[0].conv1
    conv.register_forward_pre_hook(poison_allocator)
    conv.register_full_backward_pre_hook(poison_allocator)
    result = trainer.run()
    assert result.steps == 16
    assert result.skipped_steps == 0
    assert all(torch.isfinite(p).all() for p in trainer.method.parameters())


@pytest.mark.parametrize("optimizer", ["lars", "adamw"])
@pytest.mark.parametrize("stop_after", [1, 3])
def test_resume_from_a_checkpoint_is_exact(
    optimizer: str,
    stop_after: int,
    tmp_path: Path,
    make_config: Callable[..., TrainConfig],
    make_images: Callable[..., np.ndarray],
    cpu: torch.device,
) -> None:
    """6 steps straight == `stop_after` steps, shutdown (checkpoint), a fresh Trainer resuming to 6."""
    cfg = make_config(epochs=3, optimizer=optimizer, learning_rate=1.0)
    images = make_images(16)

    straight = build_method(cfg, TINY_HEAD)
    Trainer(straight, images, cfg, cpu).run()

    ckpt = tmp_path / "run.ckpt"
    first = Trainer(
        build_method(cfg, TINY_HEAD),
        images,
        cfg,
        cpu,
        checkpoint_path=ckpt,
        callbacks=Recorder(stop_after=stop_after, reason="shutdown"),
    )
    with pytest.raises(TrainingStopped):
        first.run()

    resumed_method = build_method(cfg, TINY_HEAD)
    with torch.no_grad():  # make sure the weights come from the checkpoint, not from the shared seed
        for p in resumed_method.parameters():
            p.mul_(0.5)
    resumed = Trainer(resumed_method, images, cfg, cpu, checkpoint_path=ckpt)
    assert resumed.load_checkpoint()
    assert resumed.step == stop_after
    assert resumed.total_steps == 6
    result = resumed.run()
    assert result.steps == 6

    want, got = straight.state_dict(), resumed_method.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=name)


def test_checkpoint_describes_itself(
    tmp_path: Path, make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    cfg = make_config(epochs=2, checkpoint_every_steps=1)
    ckpt = tmp_path / "run.ckpt"
    Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu, checkpoint_path=ckpt).run()
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 2
    assert state["total_steps"] == 2
    assert state["config"] == dataclasses.asdict(cfg)
    assert {"format", "method", "optimizer", "elapsed", "generator", "versions"} <= state.keys()
    assert not ckpt.with_suffix(".tmp").exists()


def test_load_checkpoint_refuses_another_config_naming_what_differs(
    tmp_path: Path, make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    ckpt = tmp_path / "run.ckpt"
    cfg = make_config(checkpoint_every_steps=1)
    trainer = Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu, checkpoint_path=ckpt)
    assert not trainer.load_checkpoint()
    trainer.run()
    other = make_config(checkpoint_every_steps=1, seed=1)
    with pytest.raises(CheckpointMismatch, match=r"another configuration: seed \(0, now 1\)"):
        Trainer(build_method(other, TINY_HEAD), make_images(8), other, cpu, checkpoint_path=ckpt).load_checkpoint()
    state = torch.load(ckpt, weights_only=False)
    torch.save({**state, "format": 1}, ckpt)
    with pytest.raises(CheckpointMismatch, match="format 1; this version reads format 2"):
        Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu, checkpoint_path=ckpt).load_checkpoint()
    torch.save(state, ckpt)
    assert Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu, checkpoint_path=ckpt).load_checkpoint()


def test_cancel_raises_without_writing_a_checkpoint(
    tmp_path: Path, make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    cfg = make_config(epochs=4)
    ckpt = tmp_path / "run.ckpt"
    trainer = Trainer(
        build_method(cfg, TINY_HEAD),
        make_images(8),
        cfg,
        cpu,
        checkpoint_path=ckpt,
        callbacks=Recorder(stop_after=2, reason="cancel"),
    )
    with pytest.raises(TrainingStopped) as stopped:
        trainer.run()
    assert stopped.value.reason == "cancel"
    assert stopped.value.step == 2
    assert trainer.step == 2
    assert not ckpt.exists()


def test_shutdown_writes_a_checkpoint_first(
    tmp_path: Path, make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    cfg = make_config(epochs=4)
    ckpt = tmp_path / "run.ckpt"
    trainer = Trainer(
        build_method(cfg, TINY_HEAD),
        make_images(8),
        cfg,
        cpu,
        checkpoint_path=ckpt,
        callbacks=Recorder(stop_after=2, reason="shutdown"),
    )
    with pytest.raises(TrainingStopped) as stopped:
        trainer.run()
    assert stopped.value.reason == "shutdown"
    assert stopped.value.step == 2
    assert torch.load(ckpt, weights_only=False)["step"] == 2


class FakeClock:
    """A clock that advances ``tick`` seconds every time it is read."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_budget_planner_calibrates_then_refits_once_then_ends_at_the_budget() -> None:
    planner = BudgetPlanner(budget=100.0)
    # The first step took 10 s (allocations), every later one 1 s: the pace is timed after the first step.
    assert planner.plan(1, 10.0, None) == (1 + 90 // 10, False)  # one step timed so far: a rough estimate
    for step in range(2, BudgetPlanner.CALIBRATION_STEPS):
        assert planner.plan(step, 9.0 + step, None) == (91, False)  # not fixed before CALIBRATION_STEPS
    total, fix = planner.plan(8, 17.0, None)
    assert (total, fix) == (8 + 83, True)
    assert planner.plan(9, 18.0, total) == (total, False)  # before REFIT_AT of the run
    # The pace doubles to 2 s a step: refitted once at a quarter of the run, from the pace since step 1.
    refit_step = 23
    elapsed = 17.0 + 2 * (refit_step - 8)
    pace = (elapsed - 10.0) / (refit_step - 1)
    assert planner.plan(refit_step, elapsed, total) == (refit_step + int((100 - elapsed) / pace), True)
    assert planner.plan(refit_step + 1, elapsed + 2, 60) == (60, False)  # only once
    assert planner.plan(40, 100.0, 60) == (40, True)  # the budget ran out: end here


def test_budget_planner_keeps_a_resumed_runs_length() -> None:
    planner = BudgetPlanner(budget=100.0, length_fixed=True)
    assert planner.plan(50, 60.0, 80) == (80, False)
    assert planner.plan(51, 100.5, 80) == (51, True)


def test_budget_mode_fits_the_schedule_and_reports_the_steps(
    make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    cfg = make_config(epochs=None, max_minutes=1.0)
    recorder = Recorder()
    trainer = Trainer(
        build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu, callbacks=recorder, clock=FakeClock(tick=1.0)
    )  # every step reads the clock twice: 2 s a step
    assert trainer.total_steps is None
    result = trainer.run()
    assert 25 <= result.steps <= 30
    assert trainer.total_steps == result.steps == len(trainer.lr_schedule)
    assert recorder.steps[-1].step == recorder.steps[-1].total_steps == result.steps
    assert recorder.steps[-1].fraction == 1.0
    assert result.epochs == result.steps  # one step per epoch with 8 images in batches of 8


def test_exhausted_budget_ends_after_one_step(
    make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    cfg = make_config(epochs=None, max_minutes=1e-6)
    trainer = Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu)
    result = trainer.run()
    assert result.steps == trainer.total_steps == 1
    assert math.isfinite(result.final_loss)


def test_method_optimizer_options_follow_their_schedules(
    make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    """Every step uses lr_i × scale for biases and norms, and weight decay wd · f_i with f_i the cosine from 1
    to the method's end factor: f_i = E + (1 − E)(1 + cos(π i / n)) / 2."""
    cfg = make_config(epochs=3, batch_size=4, learning_rate=1.0, weight_decay=0.01, optimizer="sgd")
    method = build_method(cfg, TINY_HEAD)
    method.optimizer_settings = dataclasses.replace(
        method.optimizer_settings, no_decay_lr_scale=0.5, weight_decay_end_factor=10.0
    )
    seen: list[tuple[float, float, float, float]] = []

    class Spy(Callbacks):
        def on_step(self, progress: Progress) -> None:
            decay, no_decay = trainer.optimizer.param_groups
            seen.append((decay["lr"], no_decay["lr"], decay["weight_decay"], no_decay["weight_decay"]))

    trainer = Trainer(method, make_images(10), cfg, cpu, callbacks=Spy())
    trainer.run()
    n = trainer.total_steps
    assert n == 6
    assert len(seen) == n
    for i, (lr, lr_no_decay, wd, wd_no_decay) in enumerate(seen):
        factor = 10.0 + (1 - 10.0) * (1 + math.cos(math.pi * i / n)) / 2
        assert lr == pytest.approx(trainer.lr_schedule[i])
        assert lr_no_decay == pytest.approx(0.5 * lr)
        assert wd == pytest.approx(0.01 * factor)
        assert wd_no_decay == 0.0
    assert seen[0][2] == pytest.approx(0.01)
    assert seen[-1][2] > 0.09  # from 1× towards 10×


@pytest.mark.parametrize(("spec", "expected"), [(None, 3.0), (1.5, 1.5), (0.0, None)])
def test_a_specs_clip_grad_norm_overrides_the_methods_and_zero_turns_clipping_off(
    spec: float | None, expected: float | None
) -> None:
    defaults = OptimizerDefaults("adamw", 5e-4, 0.04, clip_grad_norm=3.0)
    cfg = TrainConfig(clip_grad_norm=spec, learning_rate=0.2)
    resolved = resolve_optimizer(cfg, defaults)
    assert resolved.clip_grad_norm == expected
    assert (resolved.optimizer, resolved.learning_rate, resolved.weight_decay) == ("adamw", 0.2, 0.04)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda(
    tmp_path: Path, make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray]
) -> None:
    cuda = torch.device("cuda")
    cfg = make_config(epochs=2)
    ckpt = tmp_path / "run.ckpt"
    first = Trainer(
        build_method(cfg, TINY_HEAD),
        make_images(8),
        cfg,
        cuda,
        checkpoint_path=ckpt,
        callbacks=Recorder(stop_after=1, reason="shutdown"),
    )
    with pytest.raises(TrainingStopped):
        first.run()
    resumed = Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cuda, checkpoint_path=ckpt)
    assert resumed.load_checkpoint()
    assert resumed.step == 1


def test_resuming_a_finished_run_reports_its_last_loss(
    tmp_path: Path, make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    """A run checkpointed at its last step (then stopped, e.g. during evaluation) resumes with no steps left;
    it must still report the loss it ended with, not NaN."""
    cfg = make_config(epochs=1, checkpoint_every_steps=1)
    ckpt = tmp_path / "run.ckpt"
    first = Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu, checkpoint_path=ckpt).run()
    again = Trainer(build_method(cfg, TINY_HEAD), make_images(8), cfg, cpu, checkpoint_path=ckpt)
    assert again.load_checkpoint()
    result = again.run()
    assert result.steps == first.steps
    assert result.final_loss == first.final_loss
    assert math.isfinite(result.final_loss)
