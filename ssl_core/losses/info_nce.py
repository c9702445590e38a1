"""InfoNCE against a queue of negatives (MoCo v2), and the ring-buffer queue that holds those negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.losses.checks import check_pair


class InfoNCELoss(nn.Module):
    """InfoNCE with a queue of negatives (He et al. 2020, "Momentum Contrast for Unsupervised Visual
    Representation Learning", eq. 1; MoCo v2: Chen et al. 2020, "Improved Baselines with Momentum
    Contrastive Learning").

        L = -1/B Σ_b log( exp(q_b·k_b / τ) / (exp(q_b·k_b / τ) + Σ_j exp(q_b·n_j / τ)) ),

    on L2-normalised q, k and queue; ``k`` and ``queue`` are detached.

    Args:
        temperature: τ > 0 (MoCo v2 uses 0.2).

    Shapes:
        ``forward(q, k, queue)``: q, k (B, D); queue (K, D), K ≥ 1; returns a scalar.

    Raises:
        ValueError: if ``temperature`` ≤ 0, q and k are not (B, D) of equal shape with B ≥ 1, or the queue is
        not (K, D) with K ≥ 1.

    Example:
        >>> InfoNCELoss()(torch.randn(8, 128), torch.randn(8, 128), torch.randn(64, 128)).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        check_pair(q, k, loss="InfoNCE", min_batch=1, unit="query")
        if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
            raise ValueError(f"expected a (K, {q.shape[1]}) queue of negatives, got {tuple(queue.shape)}")
        if queue.shape[0] == 0:
            raise ValueError("InfoNCE needs negatives: the queue is empty (enqueue keys before the first loss)")
        # Similarities in float32 even under autocast: at τ = 0.2 bf16 logits lose ~1e-2 of loss accuracy.
        with torch.autocast(q.device.type, enabled=False):
            qn = F.normalize(q.float(), dim=1)
            kn = F.normalize(k.detach().float(), dim=1)
            negatives = F.normalize(queue.detach().float(), dim=1)
            positive = (qn * kn).sum(dim=1, keepdim=True)
            negative = qn @ negatives.T
            logits = torch.cat([positive, negative], dim=1) / self.temperature
            targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
            return F.cross_entropy(logits, targets)


class FeatureQueue(nn.Module):
    """A fixed-size FIFO of key vectors, MoCo's dictionary of negatives, in registered buffers (saved in
    ``state_dict()``). Keys are stored detached and not normalised.

    Args:
        size: keys kept, K ≥ 1 (MoCo: 65536); dim: key dimension D ≥ 1.

    Shapes:
        ``enqueue(keys)``: (B, D), any B ≥ 0; a batch longer than ``size`` keeps its last ``size`` keys.
        ``negatives()``: a copy (n_filled, D).

    Raises:
        ValueError: if ``size`` or ``dim`` is not positive, or if enqueued keys are not (B, dim).

    Example:
        >>> queue = FeatureQueue(size=4, dim=2); queue.enqueue(torch.ones(3, 2)); queue.negatives().shape
        torch.Size([3, 2])
    """

    queue: torch.Tensor
    ptr: torch.Tensor
    filled: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be positive, got {size}")
        if dim < 1:
            raise ValueError(f"feature dimension must be positive, got {dim}")
        self.size = int(size)
        self.dim = int(dim)
        self.register_buffer("queue", torch.zeros(self.size, self.dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"expected keys of shape (B, {self.dim}), got {tuple(keys.shape)}")
        b = keys.shape[0]
        if b == 0:
            return
        start = int(self.ptr)
        kept = min(b, self.size)
        rows = (start + torch.arange(b - kept, b, device=self.queue.device)) % self.size
        self.queue[rows] = keys[b - kept :].detach().to(device=self.queue.device, dtype=self.queue.dtype)
        self.ptr.fill_((start + b) % self.size)
        self.filled.fill_(min(int(self.filled) + b, self.size))

    def negatives(self) -> torch.Tensor:
        return self.queue[: int(self.filled)].clone()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
