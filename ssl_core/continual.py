"""Continual pretraining: a method that starts from a trained encoder keeps what it knew with a term towards a
frozen copy of that encoder. ``lwf`` (Li and Hoiem 2016) pulls the current features to the frozen ones on the new
data; ``cassle`` (Fini et al. 2022) passes the current features through a predictor first, so the features may
move as long as they still predict the old ones."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ssl_core.augment import ViewConfig, augment_view
from ssl_core.ema import frozen_copy
from ssl_core.heads import MLPHead
from ssl_core.losses.distill import EmbeddingDistillationLoss
from ssl_core.methods.base import SSLMethod, StepOutput

Preserve = Literal["none", "lwf", "cassle"]


class Preserving(SSLMethod[Any]):
    """``method`` (its backbone initialised from a trained encoder) plus ``weight`` × a preservation term on
    one extra view per image: ``lwf``: 1 − cos(f, f₀); ``cassle``: 1 − cos(g(f), f₀), g a 2-layer MLP predictor;
    f the backbone's features, f₀ a frozen copy's, taken when this wraps ``method``. CaSSLe applies each method's
    own loss to the (g(z), z₀) pair; this uses the negative cosine of its BYOL/SimSiam form for every method.
    Everything else (views, heads, teachers, the encoder to save) is ``method``'s."""

    def __init__(self, method: SSLMethod[Any], preserve: Literal["lwf", "cassle"], weight: float) -> None:
        super().__init__(method.backbone, method.params, method.image_size, method.data)
        if preserve not in ("lwf", "cassle"):
            raise ValueError(f"preserve must be 'lwf' or 'cassle', got {preserve!r}")
        self.method = method
        self.preserve = preserve
        self.weight = weight
        self.optimizer_settings = method.optimizer_settings
        self.patch_grid = method.patch_grid
        self.frozen = frozen_copy(method.backbone).eval()
        dim = method.backbone.dim
        self.predictor: nn.Module = MLPHead(dim, dim, dim) if preserve == "cassle" else nn.Identity()
        self.criterion = EmbeddingDistillationLoss("cosine")
        self.view = ViewConfig(method.image_size)

    def train(self, mode: bool = True) -> Preserving:
        super().train(mode)
        self.frozen.eval()  # its batch-norm statistics are part of what is preserved
        return self

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        out = self.method.training_step(images, indices, generator)
        view = augment_view(images, self.view, generator)
        with torch.no_grad():
            target = self.frozen.features(view)
        term = self.criterion(self.predictor(self.backbone.features(view)), target)
        logs = {**out.logs, "ssl_loss": float(out.loss.detach()), f"{self.preserve}_loss": float(term.detach())}
        return StepOutput(out.loss + self.weight * term, logs)

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.method.on_step_end(step, total_steps)

    def encoder(self) -> Any:
        return self.method.encoder()
