"""InfoNCE against a queue of negatives (MoCo v2), and the ring-buffer queue that holds those negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.losses.checks import check_pair


class InfoNCELoss(nn.Module):
    """InfoNCE with a dictionary of negative keys (He et al. 2020, "Momentum Contrast for Unsupervised Visual
    Representation Learning", eq. 1; with the MoCo v2 defaults of Chen et al. 2020, "Improved Baselines with
    Momentum Contrastive Learning").

    For each query q_b the positive is its own key k_b and the negatives are the K rows of ``queue``:

        L = -1/B Σ_b log( exp(q_b·k_b / τ) / (exp(q_b·k_b / τ) + Σ_j exp(q_b·n_j / τ)) )

    q, k and the queue are L2-normalised inside, so the dot products are cosine similarities. This is a
    (K + 1)-way cross-entropy with the positive at index 0. The keys come from the momentum encoder and are
    treated as constants: ``k`` and ``queue`` are detached, gradients reach ``q`` only. The other keys of the
    batch are *not* used as negatives (as in MoCo); a queue with no rows is refused rather than silently
    turning the loss into the constant 0.

    Args:
        temperature: softmax temperature τ > 0 (MoCo v2 uses 0.2).

    Shapes:
        ``forward(q, k, queue)``: q and k of shape (B, D), row b of k being the key of row b of q; queue of
        shape (K, D), K ≥ 1 (for example :meth:`FeatureQueue.negatives`); returns a scalar.

    Raises:
        ValueError: if ``temperature`` is not positive, if q and k are not 2-D of equal shape, if B = 0, if the
        queue is not (K, D) with the same D, or if the queue is empty ("needs negatives").

    Example:
        >>> loss = InfoNCELoss(temperature=0.2)
        >>> loss(torch.randn(8, 128), torch.randn(8, 128), torch.randn(4096, 128)).shape
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
            positive = (qn * kn).sum(dim=1, keepdim=True)  # (B, 1)
            negative = qn @ negatives.T  # (B, K)
            logits = torch.cat([positive, negative], dim=1) / self.temperature
            targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
            return F.cross_entropy(logits, targets)


class FeatureQueue(nn.Module):
    """A fixed-size first-in-first-out queue of key vectors, MoCo's dictionary of negatives.

    The storage is a ring buffer held in registered buffers, so it follows ``.to(device)`` and is saved in
    ``state_dict()`` (a resumed run continues with the same negatives):

    - ``queue`` (size, dim), float32, initialised to zeros (the unfilled rows are never returned);
    - ``ptr`` (), int64, the row the next key is written to;
    - ``filled`` (), int64, how many rows hold real keys (grows to ``size``, then stays).

    :meth:`enqueue` behaves exactly as if the keys were pushed one at a time, oldest first: once the queue is
    full each new key overwrites the oldest one; a batch larger than ``size`` leaves only its last ``size``
    keys. Keys are stored detached, as given (not normalised: :class:`InfoNCELoss` normalises its queue).

    Args:
        size: number of keys kept, K ≥ 1 (MoCo uses 65536; it need not be a multiple of the batch size).
        dim: key dimension D ≥ 1.

    Shapes:
        ``enqueue(keys)``: keys of shape (B, D), any B ≥ 0. ``negatives()``: returns (n_filled, D), a copy, so
        enqueueing after computing a loss but before ``backward()`` is safe.

    Raises:
        ValueError: if ``size`` or ``dim`` is not positive, or if enqueued keys are not (B, dim).

    Example:
        >>> queue = FeatureQueue(size=4, dim=2)
        >>> queue.enqueue(torch.ones(3, 2))
        >>> queue.negatives().shape
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
        # Key j of the batch lands on row (start + j) % size; of a batch longer than the queue only the last
        # `size` keys survive, and those rows are all distinct.
        rows = (start + torch.arange(b - kept, b, device=self.queue.device)) % self.size
        self.queue[rows] = keys[b - kept:].detach().to(device=self.queue.device, dtype=self.queue.dtype)
        self.ptr.fill_((start + b) % self.size)
        self.filled.fill_(min(int(self.filled) + b, self.size))

    def negatives(self) -> torch.Tensor:
        # While the queue is not yet full, writes started at row 0 and never wrapped: rows [0, filled) are real.
        return self.queue[: int(self.filled)].clone()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
