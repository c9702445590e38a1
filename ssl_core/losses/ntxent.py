"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.losses.checks import check_pair


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy (Chen et al. 2020, "A Simple Framework for Contrastive
    Learning of Visual Representations", eq. 1).

        L = mean over the 2B views of -log softmax_{j ≠ i}(cos(z_i, z_j) / τ)[partner of i].

    Args:
        temperature: τ > 0.

    Shapes:
        ``forward(z0, z1)``: (B, D) each, row i of both from image i; returns a scalar.

    Raises:
        ValueError: if ``temperature`` ≤ 0, the shapes differ or are not 2-D, or B < 2.

    Example:
        >>> NTXentLoss()(torch.randn(8, 128), torch.randn(8, 128)).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        b = check_pair(z0, z1, loss="NT-Xent", min_batch=2)
        # Similarities in float32 even under autocast: bf16 costs ~1e-3 of loss accuracy at small T.
        with torch.autocast(z0.device.type, enabled=False):
            z = F.normalize(torch.cat([z0, z1]).float(), dim=1)
            logits = z @ z.T / self.temperature
            logits.fill_diagonal_(float("-inf"))
            idx = torch.arange(b, device=z.device)
            targets = torch.cat([idx + b, idx])
            return F.cross_entropy(logits, targets)
