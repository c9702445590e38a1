"""VICReg, the variance-invariance-covariance regularisation loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.losses.checks import check_pair


class VICRegLoss(nn.Module):
    """Variance-invariance-covariance regularisation (Bardes et al. 2022, "VICReg: Variance-Invariance-Covariance
    Regularization for Self-Supervised Learning", eqs. 1-6).

        L = λ·mse(Z, Z') + μ·(v(Z) + v(Z'))/2 + ν·(c(Z) + c(Z')),
        v(Z) = 1/D Σ_j max(0, 1 - sqrt(Var(z_j) + ε)),   c(Z) = 1/D Σ_{i≠j} Cov(Z)_ij²  (unbiased),

    the two variance terms averaged and the covariance terms added, as the official code (and lightly) computes
    it: the defaults (25, 25, 1) were tuned for that form, whereas eq. 6 read literally adds the variance terms.

    Args:
        sim_weight: λ ≥ 0; var_weight: μ ≥ 0; cov_weight: ν ≥ 0; eps: ε > 0.

    Shapes:
        ``forward(z0, z1)``: (B, D) each, row i of both from image i; returns a scalar.

    Raises:
        ValueError: if a weight is negative or not finite, ``eps`` ≤ 0, the shapes differ or are not 2-D, or B < 2.

    Example:
        >>> VICRegLoss()(torch.randn(8, 128), torch.randn(8, 128)).shape
        torch.Size([])
    """

    def __init__(
        self, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0, eps: float = 1e-4
    ) -> None:
        super().__init__()
        for name, weight in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
            if not (weight >= 0 and math.isfinite(weight)):
                raise ValueError(f"{name} must be a finite number >= 0, got {weight}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite positive number, got {eps}")
        self.sim_weight = float(sim_weight)
        self.var_weight = float(var_weight)
        self.cov_weight = float(cov_weight)
        self.eps = float(eps)

    def _variance_and_covariance(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v(Z) and c(Z) of one branch."""
        b, d = z.shape
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (b - 1)
        variance = F.relu(1.0 - torch.sqrt(cov.diagonal() + self.eps)).mean()
        off_diag = cov.masked_fill(torch.eye(d, dtype=torch.bool, device=cov.device), 0.0)
        covariance = off_diag.pow(2).sum() / d
        return variance, covariance

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        check_pair(z0, z1, loss="VICReg", min_batch=2, unit="samples", why="for the unbiased variance")
        # Statistics in float32 even under autocast: a bf16 covariance over the batch is off by ~1e-2.
        with torch.autocast(z0.device.type, enabled=False):
            a, c = z0.float(), z1.float()
            invariance = F.mse_loss(a, c)
            var0, cov0 = self._variance_and_covariance(a)
            var1, cov1 = self._variance_and_covariance(c)
            return self.sim_weight * invariance + self.var_weight * (var0 + var1) / 2 + self.cov_weight * (cov0 + cov1)
