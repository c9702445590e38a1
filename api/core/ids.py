"""Prefixed, time-ordered identifiers (``ds_…``, ``job_…``, ``mdl_…``, ``idx_…``, ``wh_…``, ``msg_…``)."""

from __future__ import annotations

import re
import secrets
import time

PREFIXES = {
    "tenant": "tnt",
    "key": "key",
    "dataset": "ds",
    "job": "job",
    "model": "mdl",
    "index": "idx",
    "webhook": "wh",
    "delivery": "msg",
}
_ID = re.compile(r"^[a-z]{2,3}_[0-9a-f]{24}$")


def new_id(kind: str) -> str:
    """Milliseconds since the epoch (12 hex digits) then 12 random hex digits: sorts by creation time."""
    return f"{PREFIXES[kind]}_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def looks_like(kind: str, value: str) -> bool:
    return value.startswith(PREFIXES[kind] + "_") and bool(_ID.match(value))
