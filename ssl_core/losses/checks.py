"""Input checks the losses share."""

from __future__ import annotations

import torch


def check_pair(
    a: torch.Tensor, b: torch.Tensor, *, loss: str, min_batch: int, unit: str = "pairs", why: str = ""
) -> int:
    """Raise ``ValueError`` unless ``a`` and ``b`` are two (B, D) tensors of equal shape with B ≥ ``min_batch``;
    the message names the ``loss``, the ``unit`` counted and ``why`` it needs that many. Returns B."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (B, D) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    batch = a.shape[0]
    if batch < min_batch:
        reason = f" {why}" if why else ""
        raise ValueError(f"{loss} needs at least {min_batch} {unit} per batch{reason}, got {batch}")
    return batch
