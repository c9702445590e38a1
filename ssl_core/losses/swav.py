"""SwAV: swapped prediction of Sinkhorn-Knopp cluster codes between crops."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft cluster codes with equipartition, by the Sinkhorn-Knopp algorithm (Caron et al. 2020,
    "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments", Sec. 3.1, eq. 3-5).

    Starting from Q = exp(scores / ε)ᵀ, of shape (K, B), normalised to sum to 1, each iteration scales the
    rows (prototypes) to sum to 1/K and then the columns (samples) to sum to 1/B. Finally the columns are
    scaled to sum to 1 and Q is transposed back, so row b of the result is sample b's distribution over the
    K prototypes; with enough iterations every prototype receives about B/K of the total mass.

    The computation runs in float64 (float32 on MPS, which has no float64) without gradient tracking: codes
    are targets. For stability it works on log Q: each normalisation subtracts a log-sum-exp (which takes
    out the maximum before exponentiating) instead of dividing by a sum, and Q is exponentiated only at
    the end. The result is the same as the plain algorithm's, but exp(scores / ε) can neither overflow nor
    underflow a whole row or column to zero, whatever the scale of the scores.

    Args:
        scores: (B, K) prototype scores, e.g. normalised features · normalised prototypes.
        epsilon: entropy regularisation ε > 0; smaller gives sharper codes (the paper uses 0.05).
        iterations: number of row-and-column normalisation rounds, ≥ 1 (the paper uses 3).

    Returns:
        Q of shape (B, K), each row summing to 1; float64 for float64 scores, float32 otherwise.

    Raises:
        ValueError: if ``scores`` is not 2-D with B, K ≥ 1, if ``epsilon`` is not positive, or if
        ``iterations`` < 1.

    Example:
        >>> codes = sinkhorn_knopp(torch.randn(8, 4))
        >>> codes.shape, bool(codes.sum(dim=1).allclose(torch.ones(8)))
        (torch.Size([8, 4]), True)
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
        log_q = scores.detach().to(work_dtype).T / epsilon  # (K, B)
        log_q = log_q - torch.logsumexp(log_q.flatten(), dim=0)  # total mass 1
        log_k, log_b = math.log(k), math.log(b)
        for _ in range(iterations):
            log_q = log_q - (torch.logsumexp(log_q, dim=1, keepdim=True) + log_k)  # each prototype: mass 1/K
            log_q = log_q - (torch.logsumexp(log_q, dim=0, keepdim=True) + log_b)  # each sample: mass 1/B
        q = torch.exp(log_q + log_b)  # each sample's column sums to 1
        return q.T.to(out_dtype)


class SwAVLoss(nn.Module):
    """Swapped-prediction loss of SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by
    Contrasting Cluster Assignments", eq. 1-2 and Sec. 3.2 multi-crop).

    Each crop v comes with its prototype scores z_v·C (B, K). For every global crop i the codes
    q_i = :func:`sinkhorn_knopp`(scores_i) are computed without gradient, and every *other* crop v must
    predict them from its own scores, p_v = softmax(scores_v / τ):

        L = 1/(n_global (V - 1)) Σ_{i < n_global} Σ_{v ≠ i} -1/B Σ_b Σ_k q_i[b, k] log p_v[b, k],

    the mean over all (code crop, predicting crop) pairs, V being the number of crops. Gradients flow into
    the scores only through p_v. Crops must be ordered with the ``n_global`` global crops first; codes are
    computed for those only, as in the paper's multi-crop setting. With ``queue_scores`` (the paper's queue
    for small batches), Sinkhorn-Knopp equipartitions the batch together with the Q queued rows of global
    crop i, q_i = sinkhorn([scores_i; queue_scores_i])[:B]: the codes of the batch only.

    Args:
        temperature: softmax temperature τ > 0 of the predictions (the paper uses 0.1).
        epsilon: Sinkhorn entropy regularisation ε > 0 (0.05).
        sinkhorn_iterations: Sinkhorn rounds ≥ 1 (3).

    Shapes:
        ``forward(scores, n_global, queue_scores=None)``: scores a sequence of V ≥ 2 tensors of the same
        shape (B, K), one per crop, the first ``n_global`` being global crops, 1 ≤ n_global ≤ V;
        queue_scores None or ``n_global`` tensors (Q, K); returns a scalar.

    Raises:
        ValueError: if a hyper-parameter is out of range, if fewer than 2 crops are given, if the crops are
        not 2-D of one shape with B, K ≥ 1, or if ``n_global`` is not in [1, V].

    Example:
        >>> loss = SwAVLoss()
        >>> loss([torch.randn(8, 30) for _ in range(4)], n_global=2).shape
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

    def forward(self, scores: Sequence[torch.Tensor], n_global: int,
                queue_scores: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        n_crops = len(scores)
        if n_crops < 2:
            raise ValueError(f"SwAV needs at least 2 crops to swap predictions, got {n_crops}")
        shape = scores[0].shape
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"expected (B, K) scores per crop with B, K ≥ 1, got {tuple(shape)}")
        for v, crop in enumerate(scores):
            if crop.shape != shape:
                raise ValueError(f"all crops must have the same shape: crop 0 is {tuple(shape)}, crop {v} is "
                                 f"{tuple(crop.shape)}")
        if not 1 <= n_global <= n_crops:
            raise ValueError(f"n_global must be between 1 and the number of crops ({n_crops}), got {n_global}")
        if queue_scores is not None and (len(queue_scores) != n_global
                                         or any(q.ndim != 2 or q.shape[1] != shape[1] for q in queue_scores)):
            raise ValueError(f"queue_scores must be {n_global} tensors (Q, {shape[1]}), got "
                             f"{[tuple(q.shape) for q in queue_scores]}")
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
