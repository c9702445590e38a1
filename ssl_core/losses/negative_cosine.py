"""Negative cosine similarity, the prediction loss of BYOL and SimSiam."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.losses.checks import check_pair


class NegativeCosineSimilarity(nn.Module):
    """Negative cosine similarity to a stop-gradient target (Grill et al. 2020, "Bootstrap Your Own Latent",
    eq. 2; Chen & He 2021, "Exploring Simple Siamese Representation Learning", eq. 1).

        simsiam: -cos(p, stopgrad(z)),   byol: 2 - 2·cos(p, stopgrad(z)),   averaged over the batch;

    one direction only, the symmetrised sum is the caller's.

    Args:
        form: ``"simsiam"`` or ``"byol"``.

    Shapes:
        ``forward(p, z)``: prediction and target, (B, D) each; returns a scalar.

    Raises:
        ValueError: if ``form`` is unknown, the shapes differ or are not 2-D, or the batch is empty.

    Example:
        >>> NegativeCosineSimilarity("byol")(torch.randn(8, 128), torch.randn(8, 128)).shape
        torch.Size([])
    """

    def __init__(self, form: Literal["simsiam", "byol"] = "simsiam") -> None:
        super().__init__()
        if form not in ("simsiam", "byol"):
            raise ValueError(f"form must be 'simsiam' or 'byol', got {form!r}")
        self.form: Literal["simsiam", "byol"] = form

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_pair(p, z, loss="negative cosine similarity", min_batch=1, unit="pair")
        # Cosines in float32 even under autocast: a bf16 dot product over D terms is off by ~1e-2.
        with torch.autocast(p.device.type, enabled=False):
            cos = (F.normalize(p.float(), dim=1) * F.normalize(z.detach().float(), dim=1)).sum(dim=1)
            if self.form == "byol":
                return (2.0 - 2.0 * cos).mean()
            return -cos.mean()
