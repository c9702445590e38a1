"""Multitask self-supervision: several methods train one shared backbone, each with its own heads, on a
weighted sum of their losses (Doersch & Zisserman 2017, "Multi-task Self-Supervised Visual Learning").

``balance="fixed"``: loss = Σ wᵢ·Lᵢ; ``balance="auto"``: Σ wᵢ·Lᵢ / sᵢ, sᵢ a running mean of |Lᵢ|, so each
task weighs about wᵢ whatever its loss's units (a simpler cousin of Kendall et al. 2018).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn

from ssl_core.backbones import Backbone, Family
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, SSLMethod, StepOutput
from ssl_core.params import Checked, ParamsError, param

#: Momentum of the running loss scales of ``balance="auto"``.
SCALE_MOMENTUM = 0.9


@dataclass(frozen=True, kw_only=True)
class Task(Checked):
    """One task of a multitask spec."""

    method: str = param(description="a registered method other than multitask")
    weight: float = param(1.0, gt=0, le=100, description="weight of this task's loss")
    params: dict[str, Any] = param(default_factory=dict, description="the method's own parameters")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method == "multitask":
            raise ParamsError(type(self).__name__, [(("method",), "multitask cannot contain itself")])
        if self.method not in METHODS:
            valid = ", ".join(n for n in METHODS.names() if n != "multitask")
            raise ParamsError(type(self).__name__, [(("method",), f"unknown method {self.method!r}; valid: {valid}")])
        try:  # every parameter spelled out, defaults included
            params = METHODS.get(self.method).Params(**self.params)
        except ParamsError as exc:  # located where the request has them: tasks.N.params.<name>
            raise ParamsError(
                type(self).__name__, [(("params", *loc), why) for loc, why in exc.errors], exc.hint
            ) from None
        object.__setattr__(self, "params", dataclasses.asdict(params))


@dataclass(frozen=True, kw_only=True)
class MultitaskParams(MethodParams):
    tasks: list[Task] = param(
        default_factory=lambda: [Task(method="rotation"), Task(method="simclr")],
        min_length=2,
        max_length=6,
        description="the methods to combine, each {method, weight, params}; the first one's optimiser settings "
        "are the defaults, with the tightest gradient clipping any of them asks for",
    )
    balance: Literal["fixed", "auto"] = param(
        "fixed",
        description="fixed: loss = sum of weight * task loss; auto: each task loss is first divided by a "
        "running mean of its magnitude",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        names = [t.method for t in self.tasks]
        if len(set(names)) != len(names):
            raise ParamsError(type(self).__name__, [(("tasks",), f"each method may appear once, got {names}")])


@METHODS.register("multitask")
class Multitask(SSLMethod[MultitaskParams]):
    category = "multitask"
    summary = "several methods on one backbone, weighted sum of their losses (Doersch & Zisserman 2017)"
    weights: torch.Tensor
    scales: torch.Tensor
    scales_initialised: torch.Tensor

    def __init__(self, backbone: Backbone, params: MultitaskParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.tasks = nn.ModuleList()
        for task in params.tasks:
            cls = METHODS.get(task.method)
            if backbone.family not in cls.families:
                raise ValueError(f"{task.method} does not support {backbone.family} backbones")
            self.tasks.append(cls(backbone, cls.Params(**task.params), image_size, data))
        self.register_buffer("weights", torch.tensor([t.weight for t in params.tasks]))
        self.register_buffer("scales", torch.ones(len(params.tasks)))
        self.register_buffer("scales_initialised", torch.tensor(False))
        self._last_losses: torch.Tensor | None = None

    @classmethod
    def optimizer_defaults(cls, params: MultitaskParams, family: Family | None = None) -> OptimizerDefaults:
        """The first task's optimiser settings, with the tightest gradient clipping any task asks for."""
        defaults = [
            METHODS.get(t.method).optimizer_defaults(METHODS.get(t.method).Params(**t.params), family)
            for t in params.tasks
        ]
        clips = [d.clip_grad_norm for d in defaults if d.clip_grad_norm is not None]
        return dataclasses.replace(defaults[0], clip_grad_norm=min(clips, default=None))

    @classmethod
    def check_data(cls, params: MultitaskParams, data: DataInfo) -> None:
        for task in params.tasks:
            method = METHODS.get(task.method)
            method.check_data(method.Params(**task.params), data)

    def methods(self) -> list[SSLMethod[Any]]:
        """The task methods, in the order of ``params.tasks``."""
        return [cast(SSLMethod[Any], task) for task in self.tasks]

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        outputs = [task.training_step(images, indices, generator) for task in self.methods()]
        losses = torch.stack([o.loss.float() for o in outputs])
        self._last_losses = losses.detach()
        if self.params.balance == "auto":
            scales = self.scales if bool(self.scales_initialised) else losses.detach().abs().clamp_min(1e-8)
            total = (self.weights * losses / scales).sum()
        else:
            total = (self.weights * losses).sum()
        logs: dict[str, float] = {}
        for spec, out, loss in zip(self.params.tasks, outputs, losses, strict=True):
            logs[f"{spec.method}_loss"] = float(loss.detach())
            logs.update({f"{spec.method}_{k}": v for k, v in out.logs.items()})
        return StepOutput(total, logs)

    def on_step_end(self, step: int, total_steps: int) -> None:
        for task in self.methods():
            task.on_step_end(step, total_steps)
        if self._last_losses is not None:
            magnitude = self._last_losses.abs().clamp_min(1e-8)
            if bool(self.scales_initialised):
                self.scales.mul_(SCALE_MOMENTUM).add_(magnitude, alpha=1 - SCALE_MOMENTUM)
            else:
                self.scales.copy_(magnitude)
                self.scales_initialised.fill_(True)
