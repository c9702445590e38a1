"""Fine-tuning an encoder with a linear head on few labels: ``frozen`` (head only), ``partial`` (the last stages of
the backbone and the head) or ``full``, with a backbone learning rate apart from the head's, light augmentation,
and early stopping on a validation split. The supervised baseline is the same loop from a random backbone."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.augment import ViewConfig, augment_view, eval_transform
from ssl_core.backbones import Backbone, MobileBackbone, ResNetBackbone, ViTBackbone, build_backbone
from ssl_core.batches import BatchSource
from ssl_core.data import fit_for_training, take_rows
from ssl_core.evaluate import PatchGrid
from ssl_core.precision import Requested, choose_precision
from ssl_core.schedules import warmup_cosine
from ssl_core.train import BudgetPlanner, TrainingStopped

Strategy = Literal["frozen", "partial", "full"]
StopReason = Literal["cancel", "shutdown", "lost"]
DEFAULT_MAX_MINUTES = 5.0


class Classifier(nn.Module):
    """A backbone and a linear head over its features (of the whole image, or the mean of a ``patch_grid``'s
    tiles). Shapes: ``forward``: (B, 3, S, S) normalised → (B, num_classes) logits."""

    def __init__(self, backbone: Backbone, num_classes: int, patch_grid: PatchGrid | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.patch_grid = patch_grid
        self.head = nn.Linear(backbone.dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch_grid is not None:
            return self.patch_grid.features(self.backbone, x)
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def stages(backbone: Backbone) -> list[nn.Module]:
    """The backbone's stages, input side first: a ResNet's four residual stages, a ViT's transformer blocks, a
    mobile network's blocks after its stem."""
    if isinstance(backbone, ResNetBackbone):
        return [backbone.net.layer1, backbone.net.layer2, backbone.net.layer3, backbone.net.layer4]
    if isinstance(backbone, ViTBackbone):
        return list(backbone.net.blocks)
    if isinstance(backbone, MobileBackbone):  # the inverted-residual stages after the stem convolution
        return list(backbone.net)[1:]
    raise TypeError(f"no stages known for {type(backbone).__name__}")


def stage_count(backbone: str) -> int:
    """How many stages ``partial`` fine-tuning can train for a registered backbone (by name, without building it)."""
    return len(stages(build_backbone(backbone, "standard", 32, 4)))


def trainable_modules(classifier: Classifier, strategy: Strategy, trainable_blocks: int) -> list[nn.Module]:
    """The backbone modules a strategy trains (the head always trains); the rest stay frozen, norms included.
    A ViT's final norm trains with its last block."""
    backbone = classifier.backbone
    if strategy == "full":
        return [backbone]
    if strategy == "frozen":
        return []
    blocks = stages(backbone)
    if not 1 <= trainable_blocks <= len(blocks):
        raise ValueError(f"trainable_blocks must be 1 to {len(blocks)}, got {trainable_blocks}")
    extra = [backbone.net.norm] if isinstance(backbone, ViTBackbone) else []
    return blocks[len(blocks) - trainable_blocks :] + extra


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning recipe. ``learning_rate`` is the head's for batch 256 (scaled linearly); the backbone's
    is ``backbone_lr_multiplier`` times it. SGD with Nesterov momentum 0.9, a cosine schedule after a warm-up."""

    image_size: int
    strategy: Strategy = "full"
    trainable_blocks: int = 1
    epochs: int | None = None
    max_minutes: float | None = None
    batch_size: int = 256
    learning_rate: float = 0.03
    backbone_lr_multiplier: float = 0.1
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    augment: bool = True
    #: Evaluations (once per epoch) without a better validation accuracy before training stops.
    patience: int = 20
    precision: Requested = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs is not None and self.max_minutes is not None:
            raise ValueError("give either epochs or max_minutes, not both")

    @property
    def budget_minutes(self) -> float | None:
        """The time budget: ``max_minutes``, or ``DEFAULT_MAX_MINUTES`` when neither budget is given."""
        return None if self.epochs is not None else self.max_minutes or DEFAULT_MAX_MINUTES

    def view(self) -> ViewConfig:
        """Fine-tuning augmentation: random resized crops of at least half the image and horizontal flips."""
        return ViewConfig(size=self.image_size, crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0)

    def describe(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "trainable_blocks": self.trainable_blocks if self.strategy == "partial" else None,
            "epochs": self.epochs,
            "max_minutes": self.budget_minutes,
            "batch_size": self.batch_size,
            "optimizer": "sgd, nesterov momentum 0.9, cosine schedule after a linear warm-up",
            "learning_rate": self.learning_rate,
            "backbone_lr_multiplier": self.backbone_lr_multiplier,
            "weight_decay": self.weight_decay,
            "augmentation": "random resized crop (scale 0.5-1), horizontal flip" if self.augment else "none",
            "early_stopping": f"best validation accuracy, patience {self.patience} epochs",
        }


@dataclass
class CurvePoint:
    epoch: int
    step: int
    train_loss: float
    val_accuracy: float | None
    val_loss: float | None
    lr: float
    seconds: float

    def as_event(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": round(self.train_loss, 5),
            "val_accuracy": None if self.val_accuracy is None else round(self.val_accuracy, 4),
            "val_loss": None if self.val_loss is None else round(self.val_loss, 5),
            "lr": self.lr,
            "seconds": round(self.seconds, 1),
        }


@dataclass
class FinetuneResult:
    epochs: int
    steps: int
    best_epoch: int
    best_val_accuracy: float | None
    stopped_early: bool
    seconds: float
    precision: str
    curve: list[CurvePoint] = field(default_factory=list)
    precision_reason: str = ""


@dataclass
class FinetuneCallbacks:
    on_epoch: Callable[[CurvePoint], None] = lambda point: None
    on_step: Callable[[int, int], None] = lambda step, total: None
    stop_requested: Callable[[], StopReason | None] = lambda: None


def _optimizer(classifier: Classifier, train: list[nn.Module], cfg: FinetuneConfig, lr: float) -> torch.optim.SGD:
    groups: list[dict[str, Any]] = []
    for modules, scale in (([classifier.head], 1.0), (train, cfg.backbone_lr_multiplier)):
        params = [p for m in modules for p in m.parameters()]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups += [
            {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": scale},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": scale},
        ]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=0.9, nesterov=True)


@torch.no_grad()
def predict_logits(
    classifier: Classifier, images: np.ndarray, image_size: int, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """(N, C, H, W) uint8 → (N, classes) float32 logits on the CPU, under the evaluation transform."""
    was_training = classifier.training
    classifier.eval()
    out = [torch.zeros(0, classifier.head.out_features)]
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        out.append(classifier(eval_transform(x, image_size)).float().cpu())
    classifier.train(was_training)
    return torch.cat(out)


def _set_train_mode(classifier: Classifier, train: list[nn.Module]) -> None:
    """Frozen parts keep their normalisation statistics: only trained modules and the head are in train mode."""
    classifier.eval()
    classifier.head.train()
    for module in train:
        module.train()


def finetune(
    classifier: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: FinetuneConfig,
    device: torch.device,
    callbacks: FinetuneCallbacks | None = None,
    clock: Callable[[], float] = time.monotonic,
    channels: int | None = None,
) -> FinetuneResult:
    """Train ``classifier`` on ``images[train_idx]`` as ``cfg`` says, evaluating on ``images[val_idx]`` after every
    epoch; the weights of the best validation accuracy are restored at the end (the last ones without a validation
    split). Only ``train_idx`` and ``val_idx`` are read, converted to ``channels`` if given. Raises
    ``TrainingStopped`` when a callback asks to stop and ``FloatingPointError`` when the loss is not finite."""
    callbacks = callbacks or FinetuneCallbacks()
    if len(train_idx) == 0:
        raise ValueError("no training images")
    classifier = classifier.to(device)
    train = trainable_modules(classifier, cfg.strategy, cfg.trainable_blocks)
    for p in classifier.backbone.parameters():
        p.requires_grad_(False)
    for module in train:
        for p in module.parameters():
            p.requires_grad_(True)
    batch = min(cfg.batch_size, len(train_idx))
    steps_per_epoch = max(1, len(train_idx) // batch)
    peak_lr = cfg.learning_rate * batch / 256
    optimizer = _optimizer(classifier, train, cfg, peak_lr)
    channels = channels or images.shape[1]
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    # The splits go to memory-mapped files: a fine-tune holds a batch of pixels, not its training split.
    train_images = fit_for_training(take_rows(images, train_idx, channels), cfg.image_size)
    train_labels = torch.from_numpy(labels[train_idx]).long().to(device)
    val_images = take_rows(images, val_idx, channels) if len(val_idx) else None
    val_labels = torch.from_numpy(labels[val_idx]).long() if len(val_idx) else None
    choice = choose_precision(cfg.precision, device, classifier.backbone, cfg.image_size)
    batches = BatchSource(train_images, device, batch)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    view = cfg.view()
    minutes = cfg.budget_minutes
    planner = BudgetPlanner(minutes * 60) if minutes is not None else None
    total: int | None = cfg.epochs * steps_per_epoch if cfg.epochs is not None else None
    schedule = warmup_cosine(peak_lr, total, int(cfg.warmup_fraction * total)) if total else None
    best_state: dict[str, torch.Tensor] | None = None
    best = (-1.0, math.inf)
    best_epoch, since_best, step, epoch, stopped_early = 0, 0, 0, 0, False
    curve: list[CurvePoint] = []
    started = clock()
    while total is None or step < total:
        epoch_loss, epoch_steps = 0.0, 0
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_idx))
        _set_train_mode(classifier, train)
        for i in range(steps_per_epoch):
            if total is not None and step >= total:
                break
            reason = callbacks.stop_requested()
            if reason is not None:
                raise TrainingStopped(reason, step)
            lr = float(schedule[min(step, len(schedule) - 1)]) if schedule is not None else 0.1 * peak_lr
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            idx = np.sort(order[i * batch : (i + 1) * batch])
            x, rows = batches.take(idx)
            x = augment_view(x, view, generator) if cfg.augment else eval_transform(x, cfg.image_size)
            with choice.autocast(device):
                if train:
                    logits = classifier(x)
                else:
                    with torch.no_grad():
                        features = classifier.features(x)
                    logits = classifier.head(features.float())
                loss = F.cross_entropy(logits.float(), train_labels[rows])
            value = float(loss.detach())  # the step's one wait for the device
            if not math.isfinite(value):
                raise FloatingPointError(f"loss is {value} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            epoch_loss += value
            epoch_steps += 1
            if planner is not None:
                length, fix = planner.plan(step, clock() - started, total)
                if fix:
                    total = max(step, length)
                    warmup = int(cfg.warmup_fraction * total)
                    schedule = warmup_cosine(peak_lr, total, warmup)
            if total is not None:
                callbacks.on_step(step, total)
            elif planner is not None:
                callbacks.on_step(step, planner.estimate(step, clock() - started))
        epoch += 1
        val_acc = val_loss = None
        if val_images is not None and val_labels is not None:
            logits = predict_logits(classifier, val_images, cfg.image_size, device)
            val_acc = float((logits.argmax(dim=1) == val_labels).float().mean())
            val_loss = float(F.cross_entropy(logits, val_labels))
            if (val_acc, -val_loss) > (best[0], -best[1]):
                best, best_epoch, since_best = (val_acc, val_loss), epoch, 0
                best_state = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
            else:
                since_best += 1
        point = CurvePoint(epoch, step, epoch_loss / max(epoch_steps, 1), val_acc, val_loss, lr, clock() - started)
        curve.append(point)
        callbacks.on_epoch(point)
        if since_best >= cfg.patience:
            stopped_early = True
            break
    if best_state is not None:
        classifier.load_state_dict(best_state)
    else:
        best_epoch = epoch
    classifier.eval()
    for p in classifier.parameters():
        p.requires_grad_(True)
    return FinetuneResult(
        epochs=epoch,
        steps=step,
        best_epoch=best_epoch,
        best_val_accuracy=None if best_state is None else best[0],
        stopped_early=stopped_early,
        seconds=clock() - started,
        precision=choice.precision,
        curve=curve,
        precision_reason=choice.reason,
    )
