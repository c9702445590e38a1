"""Negative cosine similarity, the prediction loss of BYOL and SimSiam."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.losses.checks import check_pair


class NegativeCosineSimilarity(nn.Module):
    """Negative cosine similarity between a prediction and a stop-gradient target (Grill et al. 2020,
    "Bootstrap Your Own Latent", eq. 2; Chen & He 2021, "Exploring Simple Siamese Representation Learning",
    eq. 1).

    With ``form="simsiam"`` the loss is D(p, z) = -cos(p, stopgrad(z)) averaged over the batch, in [-1, 1];
    with ``form="byol"`` it is BYOL's ||p̄ - z̄||² = 2 - 2·cos(p, z) averaged over the batch, in [0, 4]. The two
    differ only by an affine map (byol = 2 + 2·simsiam), so they have the same minimiser, -1 and 0
    respectively, reached when every p_i points the same way as z_i.

    The target ``z`` is detached inside the loss: no gradient ever flows into it, whatever the caller does,
    which is the stop-gradient both papers rely on to avoid collapse. The loss is one direction only; the
    symmetrised objective of the papers is ``loss(p0, z1) + loss(p1, z0)`` (halved in SimSiam), left to the
    caller. A row that is all zeros has cosine 0 with anything (it is normalised with a small epsilon).

    Args:
        form: ``"simsiam"`` for -cos, ``"byol"`` for 2 - 2·cos.

    Shapes:
        ``forward(p, z)``: p (the online network's prediction) and z (the target projection), both of shape
        (B, D), row i of p being compared with row i of z only; returns a scalar.

    Raises:
        ValueError: if ``form`` is not ``"simsiam"`` or ``"byol"``, if the shapes differ or are not 2-D, or if
        the batch is empty.

    Example:
        >>> loss = NegativeCosineSimilarity(form="byol")
        >>> loss(torch.randn(8, 128), torch.randn(8, 128)).shape
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
