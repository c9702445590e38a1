"""Watching the representation while it trains: collapse statistics and an online kNN accuracy.

- ``embedding_std``: mean per-dimension std of the L2-normalised embeddings times √D; 0 when collapsed
  (Chen & He 2021, SimSiam §4.1, without the √D).
- ``effective_rank``: exp of the entropy of the normalised singular values (Roy & Vetterli 2007).

Thresholds: docs/experiments/2026-12-04-method-defaults.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.backbones import Backbone
from ssl_core.evaluate import KnnProtocol, PatchGrid, can_evaluate, embed_images, evaluate_knn

#: Below this ``embedding_std`` the representation has collapsed; below ``WARN_STD`` it is heading there.
COLLAPSED_STD = 0.01
WARN_STD = 0.03
#: Below this effective rank the embeddings vary along (nearly) a single direction.
WARN_RANK = 2.0


class RepresentationCollapsed(RuntimeError):
    """Raised by the trainer when the monitor saw a collapsed representation ``patience`` times in a row."""


@dataclass(frozen=True)
class RepresentationStats:
    epoch: int
    embedding_std: float
    effective_rank: float
    knn_accuracy: float | None
    status: Literal["ok", "warning", "collapsed"]
    reason: str

    def as_event(self) -> dict[str, object]:
        event: dict[str, object] = {
            "epoch": self.epoch,
            "embedding_std": round(self.embedding_std, 5),
            "effective_rank": round(self.effective_rank, 3),
        }
        if self.knn_accuracy is not None:
            event["online_knn_accuracy"] = round(self.knn_accuracy, 4)
        return event


def collapse_statistics(embeddings: torch.Tensor) -> tuple[float, float]:
    """(embedding_std, effective_rank) of (N, D) embeddings (normalised here), N ≥ 2."""
    z = F.normalize(embeddings.float(), dim=1)
    std = float(z.std(dim=0).mean()) * z.shape[1] ** 0.5
    singular = torch.linalg.svdvals(z - z.mean(dim=0, keepdim=True))
    total = float(singular.sum())
    if total <= 0:
        return std, 0.0
    p = singular / total
    return std, float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


class RepresentationMonitor:
    """Measures a seeded probe of at most ``max_images`` of ``images`` ((N, C, H, W) uint8) with an encoder, plus
    kNN accuracy when ``labels`` ((N,), -1 unlabelled) allow; ``patience`` collapsed measurements in a row
    raise, and measuring takes at most ``max_overhead`` of training time."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        image_size: int,
        device: torch.device,
        max_images: int = 1024,
        seed: int = 0,
        patience: int = 2,
        max_overhead: float = 0.1,
        patch_grid: PatchGrid | None = None,
    ) -> None:
        n = len(images)
        probe = np.sort(np.random.default_rng(seed).permutation(n)[:max_images]) if n > max_images else np.arange(n)
        self.images = images[probe]
        self.labels = labels[probe] if labels is not None and can_evaluate(labels[probe]) else None
        self.protocol = KnnProtocol(k=min(20, max(1, len(probe) // 10)), seed=seed)
        self.image_size = image_size
        self.patch_grid = patch_grid
        self.device = device
        self.patience = patience
        self.max_overhead = max_overhead
        self.collapsed_in_a_row = 0
        self._spent = 0.0
        self.history: list[RepresentationStats] = []

    def due(self, training_seconds: float, last: bool) -> bool:
        """Whether to measure now: at the first and last epoch, else while measuring stays under ``max_overhead``
        of the training time."""
        return last or not self.history or self._spent < self.max_overhead * training_seconds

    @torch.no_grad()
    def measure(self, encoder: Backbone, epoch: int) -> RepresentationStats:
        started = time.monotonic()
        z = embed_images(encoder, self.images, self.image_size, self.device, patches=self.patch_grid)
        std, rank = collapse_statistics(z)
        knn = evaluate_knn(z, self.labels, self.protocol) if self.labels is not None else None
        if not np.isfinite(std) or std < COLLAPSED_STD:
            status, reason = (
                "collapsed",
                (
                    f"the embeddings of {len(z)} probe images are (nearly) identical: "
                    f"embedding_std {std:.4f} < {COLLAPSED_STD}"
                ),
            )
        elif std < WARN_STD or rank < WARN_RANK:
            status, reason = (
                "warning",
                (f"the representation may be collapsing: embedding_std {std:.4f}, effective_rank {rank:.2f}"),
            )
        else:
            status, reason = "ok", ""
        self.collapsed_in_a_row = self.collapsed_in_a_row + 1 if status == "collapsed" else 0
        stats = RepresentationStats(epoch, std, rank, knn, status, reason)  # type: ignore[arg-type]
        self.history.append(stats)
        self._spent += time.monotonic() - started
        return stats

    def state_dict(self) -> dict[str, float]:
        """What a resumed run needs: the collapsed measurements in a row and the time spent measuring."""
        return {"collapsed_in_a_row": self.collapsed_in_a_row, "spent_seconds": self._spent}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.collapsed_in_a_row = int(state["collapsed_in_a_row"])
        self._spent = float(state["spent_seconds"])

    @property
    def has_collapsed(self) -> bool:
        return self.collapsed_in_a_row >= self.patience
