"""The base of every SSL method: a backbone, a ``training_step``, a parameter dataclass and a recipe."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args, get_origin

import torch
from torch import nn

from ssl_core.augment import ViewConfig, augment_view
from ssl_core.backbones import CONV_FAMILIES, Backbone, Family
from ssl_core.device import one_pixel_convs
from ssl_core.ema import ema_update, momentum_schedule
from ssl_core.evaluate import PatchGrid
from ssl_core.params import Checked

OptimizerName = Literal["sgd", "lars", "adamw"]


@dataclass(frozen=True, kw_only=True)
class MethodParams(Checked):
    """Method-specific hyper-parameters. Subclasses, frozen keyword-only dataclasses too, add fields with bounds
    (``ssl_core.params.param``); unknown keys and out-of-range values are refused."""


P = TypeVar("P", bound=MethodParams)


@dataclass(frozen=True)
class DataInfo:
    """What a method may need to know about its training data before it sees a batch."""

    num_images: int = 0
    channels: int = 3


@dataclass
class StepOutput:
    """What one training step returns: the loss to minimise and scalars to log."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerDefaults:
    """How a method trains unless the spec says otherwise; the spec can override the first four."""

    optimizer: OptimizerName
    #: Per 256 images, scaled linearly with the batch size.
    learning_rate: float
    weight_decay: float
    clip_grad_norm: float | None = None
    adamw_betas: tuple[float, float] = (0.9, 0.999)
    #: Learning rate of biases and normalisation parameters as a fraction of the weights' rate.
    no_decay_lr_scale: float = 1.0
    #: Weight decay at the end of training as a multiple of its start, reached along a cosine (1: constant).
    weight_decay_end_factor: float = 1.0
    #: One line on where the setting comes from (not part of the settings).
    why: str = field(default="", compare=False, repr=False)

    def settings(self) -> dict[str, Any]:
        """The settings as JSON-ready values, without ``why``."""
        settings = {name: value for name, value in asdict(self).items() if name != "why"}
        return {**settings, "adamw_betas": list(self.adamw_betas)}


@dataclass(frozen=True)
class Recipe:
    """A method's optimiser defaults: ``default`` for every backbone family unless ``by_family`` has its own."""

    default: OptimizerDefaults
    by_family: Mapping[Family, OptimizerDefaults] = field(default_factory=dict)

    def for_family(self, family: Family | None) -> OptimizerDefaults:
        """``by_family``'s entry for ``family``; mobile networks take the ResNets' entry where they have none."""
        if family is None:
            return self.default
        if family == "mobile" and family not in self.by_family:
            family = "resnet"
        return self.by_family.get(family, self.default)


class SSLMethod(nn.Module, Generic[P]):
    """A self-supervised method: owns the backbone and heads, turns a batch into a loss. Subclasses of
    ``SSLMethod[ItsParams]`` set ``recipe``, ``families``, ``category``, ``summary`` and implement
    ``training_step``; running state moves in ``on_step_end``, after taken steps only."""

    Params: ClassVar[type[MethodParams]] = MethodParams
    recipe: ClassVar[Recipe] = Recipe(OptimizerDefaults("sgd", 0.1, 1e-4))
    #: Backbone families the method works with; the first is listed first by the API.
    families: ClassVar[tuple[Family, ...]] = ("resnet", "vit", "mobile")
    #: For listings: pretext, contrastive, non_contrastive, transformer, multitask.
    category: ClassVar[str] = ""
    #: One line on what the method does, with its paper.
    summary: ClassVar[str] = ""
    #: The augmentation of each view a training step takes, in order.
    view_configs: tuple[ViewConfig, ...] = ()
    #: How the encoder embeds an image: None, whole; a ``PatchGrid`` for methods trained on tiles.
    patch_grid: PatchGrid | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            args = get_args(base)
            if get_origin(base) is SSLMethod and args and isinstance(args[0], type):
                cls.Params = args[0]

    def __init__(self, backbone: Backbone, params: P, image_size: int, data: DataInfo) -> None:
        super().__init__()
        self.backbone = backbone
        self.params: P = params
        self.image_size = image_size
        self.data = data
        #: What the trainer uses; ``ssl_core.train.build_method`` applies a spec's overrides.
        self.optimizer_settings = self.optimizer_defaults(params, backbone.family)

    @classmethod
    def optimizer_defaults(cls, params: Any, family: Family | None = None) -> OptimizerDefaults:
        """The optimiser settings for ``params`` on a backbone of ``family`` (None: ``recipe.default``)."""
        return cls.recipe.for_family(family)

    @classmethod
    def check_data(cls, params: Any, data: DataInfo) -> None:
        """Raise ``ValueError`` with the reason when the method cannot train on such data."""

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        """images: (B, C, H, W) float in [0, 1], not yet augmented; indices: (B,) int64 dataset positions."""
        raise NotImplementedError

    def views(self, images: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
        """One augmented view of the batch per entry of ``view_configs``: a list of (B, C, s, s)."""
        return [augment_view(images, view, generator) for view in self.view_configs]

    def embed_two_views(
        self, head: nn.Module, images: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views of every image through the backbone and ``head`` in one pass (batch norm sees them
        together): (z1, z2), each (B, D), row i of both from image i."""
        z1, z2 = head(self.backbone.features(torch.cat(self.views(images, generator)))).chunk(2)
        return z1, z2

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step; ``step`` is the step just taken, counted from 0."""

    def update_teachers(
        self, step: int, total_steps: int, base_momentum: float, *pairs: tuple[nn.Module, nn.Module]
    ) -> None:
        """One EMA step of every (teacher, student) pair, the momentum rising from ``base_momentum`` to 1 along
        BYOL's cosine over ``total_steps``."""
        momentum = momentum_schedule(base_momentum, step, total_steps)
        for teacher, student in pairs:
            ema_update(teacher, student, momentum)

    def encoder(self) -> Backbone:
        """The backbone to evaluate and save (a teacher for methods whose teacher is the better encoder)."""
        return self.backbone


def fp32_view_sizes(backbone: Backbone, sizes: set[int]) -> set[int]:
    """View sizes at which a convolutional backbone meets a strided convolution on a 1×1 map, where oneDNN's bf16
    backward is unreliable: ``multi_size_features`` runs them in float32."""
    return {s for s in sizes if backbone.family in CONV_FAMILIES and one_pixel_convs(backbone, s)}


def multi_size_features(
    backbone: Backbone, crops: list[torch.Tensor], fp32_sizes: set[int] | None = None
) -> torch.Tensor:
    """Backbone features of multi-crop views in crop order, consecutive crops of one size in one call; sizes in
    ``fp32_sizes`` run outside autocast. Shapes: V tensors (B, 3, s_v, s_v) → (V·B, D)."""
    features: list[torch.Tensor] = []
    start = 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
            end += 1
        x = torch.cat(crops[start:end])
        if fp32_sizes and x.shape[-1] in fp32_sizes:
            with torch.autocast(x.device.type, enabled=False):
                features.append(backbone.features(x.float()))
        else:
            features.append(backbone.features(x))
        start = end
    return torch.cat(features)
