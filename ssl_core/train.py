"""The method-agnostic training loop: ``build_method`` and ``Trainer`` set up, ``Trainer.run`` loops, a
``BudgetPlanner`` fits ``max_minutes``, and a run resumes exactly from its checkpoint."""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ssl_core.backbones import Backbone, backbone_family, build_backbone
from ssl_core.batches import BatchSource, Placement
from ssl_core.config import TrainConfig
from ssl_core.data import fit_for_training, to_float
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, OptimizerDefaults, SSLMethod
from ssl_core.monitor import RepresentationCollapsed, RepresentationMonitor, RepresentationStats
from ssl_core.optim import build_optimizer
from ssl_core.precision import PrecisionChoice, StepProbe, choose_precision
from ssl_core.schedules import warmup_cosine
from ssl_core.timing import PhaseClock

CHECKPOINT_FORMAT = 2
# Non-finite gradients skip the step, as loss scalers do; this many in a row means divergence.
MAX_SKIPPED_IN_A_ROW = 10
#: At most this many images in the step ``auto`` precision times in each precision: bf16's gain depends on the
#: batch (casts and small kernels weigh more in small ones), so the run's own batch, up to this.
PROBE_IMAGES = 256


class CheckpointMismatch(ValueError):
    """Raised when a checkpoint was written by another format or for another training configuration."""


class TrainingStopped(Exception):
    """Raised by the loop when a callback asked it to stop; ``reason`` is ``cancel``, ``shutdown`` or ``lost``."""

    def __init__(self, reason: str, step: int) -> None:
        super().__init__(f"training stopped ({reason}) at step {step}")
        self.reason = reason
        self.step = step


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    images_per_second: float
    elapsed_seconds: float
    skipped_steps: int = 0

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / max(self.total_steps, 1))

    @property
    def eta_seconds(self) -> float | None:
        if self.step == 0:
            return None
        return self.elapsed_seconds / self.step * (self.total_steps - self.step)


class Callbacks:
    """Hooks the loop calls. The defaults do nothing; override what you need."""

    def on_step(self, progress: Progress) -> None: ...

    def on_epoch_end(self, epoch: int, progress: Progress) -> None: ...

    def on_representation(self, stats: RepresentationStats) -> None:
        """After the representation monitor measured the encoder (see ``ssl_core.monitor``)."""

    def may_write_checkpoint(self) -> bool:
        """False when another process has taken the run over: its checkpoint is no longer ours to write."""
        return True

    def stop_requested(self) -> Literal["cancel", "shutdown", "lost"] | None:
        """``cancel``: stop now; ``shutdown``: checkpoint, then stop; ``lost``: stop without writing anything
        (someone else owns the run now)."""
        return None


#: The phases of a step, in the order they run; ``forward`` includes the method's augmentation of the batch.
STEP_PHASES = ("data", "forward", "backward", "optimizer", "monitor")


@dataclass
class TrainResult:
    steps: int
    epochs: float
    final_loss: float
    seconds: float
    images_per_second: float
    skipped_steps: int = 0
    #: Seconds spent in each of ``STEP_PHASES`` by this process's run (``ssl_core.timing.PhaseClock``: wall
    #: clock on CPUs, device time between CUDA events on GPUs).
    step_profile: dict[str, float] | None = None


def build_method(
    cfg: TrainConfig,
    params: dict[str, Any] | None = None,
    data: DataInfo | None = None,
    backbone: Backbone | None = None,
) -> SSLMethod:
    """Instantiate the configured method on ``backbone`` (a trained encoder to continue from, the configured
    one), else on a fresh backbone seeded by ``cfg.seed``. Raises ``ValueError`` when the method does not support
    the backbone or cannot train on ``data``."""
    method_cls = METHODS.get(cfg.method)
    method_params = method_cls.Params(**(params or {}))
    data = data or DataInfo()
    family = backbone_family(cfg.backbone)
    if family not in method_cls.families:
        raise ValueError(
            f"{cfg.method} does not support {cfg.backbone} backbones; supported families: "
            f"{', '.join(method_cls.families)}"
        )
    method_cls.check_data(method_params, data)
    torch.manual_seed(cfg.seed)  # the heads' initialisation
    method = method_cls(
        backbone if backbone is not None else initial_backbone(cfg), method_params, cfg.image_size, data
    )
    method.optimizer_settings = resolve_optimizer(cfg, method.optimizer_settings)
    return method


def resolve_optimizer(cfg: TrainConfig, defaults: OptimizerDefaults) -> OptimizerDefaults:
    """The method's optimiser defaults with the spec's choices applied; ``clip_grad_norm`` 0 turns clipping off."""
    clip = defaults.clip_grad_norm if cfg.clip_grad_norm is None else cfg.clip_grad_norm or None
    return replace(
        defaults,
        optimizer=cfg.optimizer or defaults.optimizer,
        learning_rate=defaults.learning_rate if cfg.learning_rate is None else cfg.learning_rate,
        weight_decay=defaults.weight_decay if cfg.weight_decay is None else cfg.weight_decay,
        clip_grad_norm=clip,
    )


def initial_backbone(cfg: TrainConfig) -> Backbone:
    """The configured backbone as training starts from it (seeded by ``cfg.seed``): also the random-init
    baseline of evaluations."""
    torch.manual_seed(cfg.seed)
    return build_backbone(cfg.backbone, cfg.stem, cfg.image_size, cfg.patch_size)


@functools.lru_cache(maxsize=2)  # once per epoch, not per step: a permutation of N costs ~0.6 ms at N = 60,000
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class BudgetPlanner:
    """Fits a run's length to ``budget`` seconds: timed from the end of its first step, fixed after
    ``CALIBRATION_STEPS`` steps, refitted once at ``REFIT_AT``, cut when the budget runs out."""

    CALIBRATION_STEPS = 8
    REFIT_AT = 0.25

    def __init__(self, budget: float, length_fixed: bool = False) -> None:
        self.budget = budget
        self._refitted = length_fixed
        self._timing_from: tuple[int, float] | None = None

    def plan(self, step: int, elapsed: float, total: int | None) -> tuple[int, bool]:
        """After ``step`` steps in ``elapsed`` seconds, with the run's current length ``total`` (None while it is
        unknown): the length to report and whether to fix the schedule to it."""
        if self._timing_from is None:
            self._timing_from = (step, elapsed)
        if elapsed >= self.budget:
            return step, True
        if total is not None and (self._refitted or step < self.REFIT_AT * total):
            return total, False
        estimate = max(step + 1, step + int((self.budget - elapsed) / self._seconds_per_step(step, elapsed)))
        if total is not None:
            self._refitted = True
            return estimate, True
        return estimate, step >= self.CALIBRATION_STEPS

    def estimate(self, step: int, elapsed: float) -> int:
        """The length of the run at the pace so far, while it is not fixed yet (at least ``step + 1``)."""
        if step == 0 or elapsed <= 0:
            return step + 1
        return max(step + 1, int(step * self.budget / elapsed))

    def _seconds_per_step(self, step: int, elapsed: float) -> float:
        assert self._timing_from is not None
        start_step, start_elapsed = self._timing_from
        if step > start_step:
            return max((elapsed - start_elapsed) / (step - start_step), 1e-9)
        return max(elapsed / step, 1e-9)


class Trainer:
    """Trains ``method`` on ``images`` ((N, C, H, W) uint8) according to ``cfg``, with the optimiser settings the
    method was built with (``method.optimizer_settings``). ``clock`` measures the time budget."""

    def __init__(
        self,
        method: SSLMethod[Any],
        images: np.ndarray,
        cfg: TrainConfig,
        device: torch.device,
        checkpoint_path: Path | None = None,
        callbacks: Callbacks | None = None,
        monitor: RepresentationMonitor | None = None,
        clock: Callable[[], float] = time.monotonic,
        placement: Placement | None = None,
        compile_backbone: bool = False,
    ) -> None:
        if len(images) < 2:
            raise ValueError(f"need at least 2 images to train, got {len(images)}")
        self.cfg = cfg
        self.device = device
        self.images = fit_for_training(images, cfg.image_size)
        self.batch_size = min(cfg.batch_size, len(images))
        self.steps_per_epoch = len(images) // self.batch_size
        self.method = method.to(device)
        self.settings = method.optimizer_settings
        self.peak_lr = self.settings.learning_rate * self.batch_size / 256
        self.optimizer = build_optimizer(
            self.settings.optimizer,
            self.method,
            self.peak_lr,
            self.settings.weight_decay,
            self.settings.adamw_betas,
            self.settings.no_decay_lr_scale,
        )
        self.checkpoint_path = checkpoint_path
        self.callbacks = callbacks or Callbacks()
        self.monitor = monitor
        self.clock = clock
        self.planner: BudgetPlanner | None = None
        self.precision_choice = choose_precision(
            cfg.precision, device, self.method.backbone, cfg.image_size, step_probe=self._step_probe()
        )
        self.autocast_dtype = self.precision_choice.autocast_dtype
        self.batches = BatchSource(self.images, device, self.batch_size, placement)
        if compile_backbone:  # after the precision probe, which runs a copy of the method
            self.compile_backbone()
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.step = 0
        self.loss = math.nan
        self.skipped_steps = 0
        self._skipped_in_a_row = 0
        self.phases = PhaseClock(device, STEP_PHASES)
        self.elapsed = 0.0
        self.total_steps: int | None = (cfg.epochs or 0) * self.steps_per_epoch or None
        self.lr_schedule: np.ndarray | None = None
        #: Per-step multiple of the weight decay (None: constant).
        self.wd_schedule: np.ndarray | None = None
        if self.total_steps is not None:
            self._fix_schedule(self.total_steps)

    def _step_probe(self) -> StepProbe:
        """This run's forward and backward pass on a copy of the method (the run's weights, batch-norm statistics
        and random streams stay untouched), on at most ``PROBE_IMAGES`` images."""
        n = min(self.batch_size, PROBE_IMAGES)
        key = json.dumps(
            [
                self.cfg.method,
                self.cfg.backbone,
                self.cfg.stem,
                self.cfg.image_size,
                self.cfg.patch_size,
                n,
                self.images.shape[1],
                asdict(self.method.params),
            ],
            sort_keys=True,
        )
        state: dict[str, Any] = {}

        def step(choice: PrecisionChoice) -> None:
            if not state:
                state["method"] = copy.deepcopy(self.method)
                state["images"] = to_float(np.array(self.images[:n]), self.device)  # a copy: memmaps are read-only
                state["indices"] = torch.arange(n, device=self.device)
                state["generator"] = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
            method = state["method"]
            with choice.autocast(self.device):
                loss = method.training_step(state["images"], state["indices"], state["generator"]).loss
            loss.backward()
            method.zero_grad(set_to_none=True)

        return StepProbe(key, n, step)

    def compile_backbone(self) -> None:
        """Compile the network the backbone's ``features`` runs with ``torch.compile``, in place: weights and
        state-dict keys stay as they are; the first steps at each new input shape pay for the compilation."""
        net = self.method.backbone.net
        assert isinstance(net, torch.nn.Module)
        net.compile()

    @property
    def precision(self) -> Literal["bf16", "float32"]:
        """``bf16`` (autocast) or ``float32``, as ``ssl_core.precision.choose_precision`` chose it; its reason is
        ``precision_choice.reason``."""
        return self.precision_choice.precision

    def _fix_schedule(self, total_steps: int) -> None:
        self.total_steps = max(1, total_steps)
        warmup = int(self.cfg.warmup_fraction * self.total_steps)
        self.lr_schedule = warmup_cosine(self.peak_lr, self.total_steps, warmup)
        end = self.settings.weight_decay_end_factor
        self.wd_schedule = None if end == 1.0 else warmup_cosine(1.0, self.total_steps, 0, final=end)

    def _lr(self, step: int) -> float:
        if self.lr_schedule is None:  # calibrating a time budget: a gentle constant start
            return self.peak_lr * 0.1
        return float(self.lr_schedule[min(step, len(self.lr_schedule) - 1)])

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.cfg),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "total_steps": self.total_steps,
            "elapsed": self.elapsed,
            "loss": self.loss,
            "skipped_steps": self.skipped_steps,
            "generator": self.generator.get_state(),
            "monitor": self.monitor.state_dict() if self.monitor is not None else None,
            "versions": {"torch": str(torch.__version__)},
        }

    def save_checkpoint(self) -> None:
        """Write the checkpoint atomically, unless the callbacks say this run no longer owns it."""
        if self.checkpoint_path is None:
            return
        tmp = self.checkpoint_path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(self.state_dict(), tmp)
        if self.callbacks.may_write_checkpoint():  # asked last: the window before the rename is a rename long
            os.replace(tmp, self.checkpoint_path)
        else:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self) -> bool:
        """Resume from ``checkpoint_path`` if it exists; returns whether it did. Raises ``CheckpointMismatch``
        naming the reason when the checkpoint has another format or was written for another configuration."""
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointMismatch(
                f"the checkpoint has format {state.get('format')}; this version reads format {CHECKPOINT_FORMAT}"
            )
        config = asdict(self.cfg)
        # A setting added since the checkpoint was written counts as its default there.
        stored = {**{f.name: f.default for f in fields(TrainConfig)}, **state["config"]}
        changed = [
            f"{key} ({stored.get(key)!r}, now {config.get(key)!r})"
            for key in sorted(config.keys() | stored.keys())
            if stored.get(key) != config.get(key)
        ]
        if changed:
            raise CheckpointMismatch(f"the checkpoint was written for another configuration: {', '.join(changed)}")
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.elapsed = state["elapsed"]
        self.loss = state["loss"]
        self.skipped_steps = state["skipped_steps"]
        self.generator.set_state(state["generator"].cpu())  # map_location may have moved it
        if self.monitor is not None and state.get("monitor") is not None:  # absent from older checkpoints
            self.monitor.load_state_dict(state["monitor"])
        if state["total_steps"] is not None:
            self._fix_schedule(state["total_steps"])
        return True

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, self.steps_per_epoch)
        order = _epoch_order(len(self.images), self.cfg.seed, epoch)
        idx = np.sort(order[i * self.batch_size : (i + 1) * self.batch_size])
        return self.batches.take(idx)

    def _wd_factor(self, step: int) -> float:
        if self.wd_schedule is None:
            return 1.0
        return float(self.wd_schedule[min(step, len(self.wd_schedule) - 1)])

    def _train_step(self, step: int) -> float:
        lr, wd_factor = self._lr(step), self._wd_factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            if "base_weight_decay" in group:  # absent from checkpoints written before the schedule existed
                group["weight_decay"] = group["base_weight_decay"] * wd_factor
        tick = self.phases.mark()
        images, indices = self._batch(step)
        tick = self.phases.lap("data", tick)
        with self.precision_choice.autocast(self.device):
            out = self.method.training_step(images, indices, self.generator)
        loss = out.loss
        tick = self.phases.lap("forward", tick)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        tick = self.phases.lap("backward", tick)
        grads = [p.grad for p in self.method.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
        # The step's one wait for the device: the loss to report and whether every gradient is finite.
        value, norm_value = torch.stack([loss.detach().float(), norm.detach().float()]).tolist()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {step}; lower the learning rate")
        if math.isfinite(norm_value):  # else a kernel poisoned the gradients while the loss stayed finite
            if self.settings.clip_grad_norm is not None:
                torch.nn.utils.clip_grads_with_norm_(grads, self.settings.clip_grad_norm, norm)
            self.optimizer.step()
            self.method.on_step_end(step, self.total_steps or self._estimated_total_steps(step))
            self._skipped_in_a_row = 0
        else:
            self.skipped_steps += 1
            self._skipped_in_a_row += 1
            if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                raise FloatingPointError(
                    f"gradients were not finite for {MAX_SKIPPED_IN_A_ROW} steps in a row "
                    f"(up to step {step}); lower the learning rate"
                )
        self.phases.lap("optimizer", tick)
        return value

    def _estimated_total_steps(self, step: int) -> int:
        """While a time budget is being calibrated the length is unknown: estimate it from the pace so far."""
        return self.planner.estimate(step, self.elapsed) if self.planner is not None else step + 1

    def _watch_representation(self, epoch: int, last: bool) -> None:
        if self.monitor is None or not self.monitor.due(self.elapsed, last):
            return
        tick = self.phases.mark()
        stats = self.monitor.measure(self.method.encoder(), epoch)
        self.phases.lap("monitor", tick)
        self.callbacks.on_representation(stats)
        if self.monitor.has_collapsed:
            raise RepresentationCollapsed(
                f"{stats.reason}, {self.monitor.patience} measurements in a row "
                f"(epoch {epoch}); try a lower learning rate or another method"
            )

    def _check_finite(self) -> None:
        bad = [
            name
            for name, t in [*self.method.named_parameters(), *self.method.named_buffers()]
            if t.is_floating_point() and not bool(torch.isfinite(t).all())
        ]
        if bad:
            raise FloatingPointError(
                f"{len(bad)} weight tensors are not finite after training (first: {bad[0]}); lower the learning rate"
            )

    def run(self) -> TrainResult:
        self.method.train()
        started = self.clock() - self.elapsed
        run_start_step, run_start_time = self.step, self.clock()
        if self.cfg.max_minutes is not None:
            self.planner = BudgetPlanner(self.cfg.max_minutes * 60, length_fixed=self.total_steps is not None)
        while self.total_steps is None or self.step < self.total_steps:
            reason = self.callbacks.stop_requested()
            if reason is not None:
                if reason == "shutdown":
                    self.save_checkpoint()
                raise TrainingStopped(reason, self.step)
            self.loss = self._train_step(self.step)
            self.step += 1
            self.elapsed = self.clock() - started
            total = self.total_steps
            if self.planner is not None:
                total, fix = self.planner.plan(self.step, self.elapsed, self.total_steps)
                if fix:
                    self._fix_schedule(total)
            assert total is not None
            rate = (self.step - run_start_step) * self.batch_size / max(self.clock() - run_start_time, 1e-9)
            progress = Progress(
                self.step,
                total,
                self.step // self.steps_per_epoch,
                self.loss,
                self._lr(self.step - 1),
                rate,
                self.elapsed,
                self.skipped_steps,
            )
            self.callbacks.on_step(progress)
            if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                self.callbacks.on_epoch_end(progress.epoch, progress)
                self._watch_representation(progress.epoch, last=self.step == self.total_steps)
            if self.step % self.cfg.checkpoint_every_steps == 0:
                self.save_checkpoint()
        self.method.eval()
        self._check_finite()
        seconds = self.elapsed
        return TrainResult(
            self.step,
            self.step / self.steps_per_epoch,
            self.loss,
            seconds,
            self.step * self.batch_size / max(seconds, 1e-9),
            self.skipped_steps,
            dict(self.phases.flush()),
        )
