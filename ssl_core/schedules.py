"""Per-step schedules, computed up front as one value per step."""

from __future__ import annotations

import math

import numpy as np


def warmup_cosine(base: float, total_steps: int, warmup_steps: int = 0, final: float = 0.0) -> np.ndarray:
    """Linear warm-up from 0 to ``base`` over ``warmup_steps``, then cosine decay to ``final``: ``total_steps``
    values, value i for step i; the warm-up's first value is base / warmup_steps, not 0."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
    warm = base * np.arange(1, warmup_steps + 1) / max(warmup_steps, 1)
    n = total_steps - warmup_steps
    t = np.arange(n) / max(n, 1)
    cos = final + 0.5 * (base - final) * (1 + np.cos(math.pi * t))
    return np.concatenate([warm, cos]).astype(np.float64)
