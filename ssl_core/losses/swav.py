"""SwAV: swapped prediction of Sinkhorn-Knopp cluster codes between crops."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft cluster codes with equipartition, by Sinkhorn-Knopp (Caron et al. 2020, "Unsupervised Learning
    of Visual Features by Contrasting Cluster Assignments", Sec. 3.1, eq. 3-5).

    Q = exp(scores / ε)ᵀ is scaled alternately so each prototype holds 1/K and each sample 1/B of the mass;
    no gradient, float64 (float32 on MPS), in log space so nothing underflows.

    Args:
        scores: (B, K) prototype scores; epsilon: ε > 0 (paper: 0.05); iterations: rounds ≥ 1 (paper: 3).

    Returns:
        Q (B, K), rows summing to 1; float64 for float64 scores, float32 otherwise.

    Raises:
        ValueError: if ``scores`` is not 2-D with B, K ≥ 1, if ``epsilon`` ≤ 0, or if ``iterations`` < 1.

    Example:
        >>> sinkhorn_knopp(torch.randn(8, 4)).sum(dim=1).allclose(torch.ones(8))
        True
    """
    if scores.dim() != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"expected (B, K) scores with B, K ≥ 1, got {tuple(scores.shape)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"sinkhorn iterations must be at least 1, got {iterations}")
    work_dtype = torch.float32 if scores.device.type == "mps" else torch.float64
    out_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    b, k = scores.shape
    with torch.autocast(scores.device.type, enabled=False):
        log_q = scores.detach().to(work_dtype).T / epsilon
        log_q = log_q - torch.logsumexp(log_q.flatten(), dim=0)
        log_k, log_b = math.log(k), math.log(b)
        for _ in range(iterations):
            log_q = log_q - (torch.logsumexp(log_q, dim=1, keepdim=True) + log_k)
            log_q = log_q - (torch.logsumexp(log_q, dim=0, keepdim=True) + log_b)
        q = torch.exp(log_q + log_b)
        return q.T.to(out_dtype)


class SwAVLoss(nn.Module):
    """Swapped-prediction loss of SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by
    Contrasting Cluster Assignments", eq. 1-2 and Sec. 3.2 multi-crop).

        L = mean over pairs (i global, v ≠ i) of -1/B Σ_b Σ_k q_i[b, k] log softmax(scores_v / τ)[b, k],

    q_i = sinkhorn(scores_i), or of [scores_i; queue_scores_i] keeping the batch's rows.

    Args:
        temperature: τ > 0 (paper: 0.1); epsilon: Sinkhorn ε > 0 (0.05); sinkhorn_iterations: ≥ 1 (3).

    Shapes:
        ``forward(scores, n_global, queue_scores=None)``: V ≥ 2 tensors (B, K), global crops first,
        1 ≤ n_global ≤ V; queue_scores None or ``n_global`` tensors (Q, K); returns a scalar.

    Raises:
        ValueError: if a hyper-parameter is out of range, the crops are fewer than 2 or not (B, K) of one
        shape, or ``n_global`` is not in [1, V].

    Example:
        >>> SwAVLoss()([torch.randn(8, 30) for _ in range(4)], n_global=2).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        if sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be at least 1, got {sinkhorn_iterations}")
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)

    def forward(
        self, scores: Sequence[torch.Tensor], n_global: int, queue_scores: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        n_crops = len(scores)
        if n_crops < 2:
            raise ValueError(f"SwAV needs at least 2 crops to swap predictions, got {n_crops}")
        shape = scores[0].shape
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"expected (B, K) scores per crop with B, K ≥ 1, got {tuple(shape)}")
        for v, crop in enumerate(scores):
            if crop.shape != shape:
                raise ValueError(
                    f"all crops must have the same shape: crop 0 is {tuple(shape)}, crop {v} is {tuple(crop.shape)}"
                )
        if not 1 <= n_global <= n_crops:
            raise ValueError(f"n_global must be between 1 and the number of crops ({n_crops}), got {n_global}")
        if queue_scores is not None and (
            len(queue_scores) != n_global or any(q.ndim != 2 or q.shape[1] != shape[1] for q in queue_scores)
        ):
            raise ValueError(
                f"queue_scores must be {n_global} tensors (Q, {shape[1]}), got {[tuple(q.shape) for q in queue_scores]}"
            )
        b = shape[0]
        with torch.autocast(scores[0].device.type, enabled=False):
            log_p = [F.log_softmax(crop.float() / self.temperature, dim=1) for crop in scores]
            total = log_p[0].new_zeros(())
            for i in range(n_global):
                batch = scores[i] if queue_scores is None else torch.cat([scores[i], queue_scores[i].to(scores[i])])
                codes = sinkhorn_knopp(batch, self.epsilon, self.sinkhorn_iterations)[:b].to(log_p[0])
                for v in range(n_crops):
                    if v != i:
                        total = total - (codes * log_p[v]).sum(dim=1).mean()
            return total / (n_global * (n_crops - 1))
