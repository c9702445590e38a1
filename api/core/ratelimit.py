"""Per-key token buckets. The state lives in this process: each API process limits on its own, so N processes
behind a load balancer let a key through at up to N times its rate."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """Whether a request may go ahead; ``retry_after`` (whole seconds, at least 1) says when the next token is due
    and ``reset`` when the bucket is full again."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: int
    reset: int


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets of ``per_minute`` tokens that refill at ``per_minute / 60`` tokens a second, one per key.

    ``clock`` returns seconds (monotonic by default). Thread-safe: sync dependencies run in a thread pool.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, per_minute: int) -> Decision:
        """Spend one of ``key``'s tokens if there is one. ``per_minute`` is also the bucket's size (the burst)."""
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, got {per_minute}")
        rate = per_minute / 60.0
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(tokens=float(per_minute), updated=now)
            # A lowered limit takes effect at once: the bucket never holds more than the current size.
            bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            tokens = bucket.tokens
        return Decision(
            allowed=allowed,
            limit=per_minute,
            remaining=int(tokens),
            retry_after=max(1, math.ceil((1.0 - tokens) / rate)) if not allowed else 0,
            reset=max(0, math.ceil((per_minute - tokens) / rate)),
        )
