"""bench/device/wheels.py: what travels to the lent GPU machine for `pip install .` to resolve there offline."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "device"))

import wheels


def test_the_service_travels_and_the_machines_pytorch_stays() -> None:
    needed = wheels.closure("jaga")
    assert {"fastapi", "celery", "faiss-cpu", "sqlalchemy", "pydantic-core", "python-dateutil"} <= set(needed)
    assert not needed.keys() & wheels.MACHINE_ROOTS
    assert not [n for n in needed if n.startswith(("nvidia-", "triton", "cuda-"))]


def test_only_requirements_for_cpython_312_on_linux_count() -> None:
    needed = wheels.closure("jaga")
    assert "exceptiongroup" not in needed  # Celery asks for it on Python < 3.11 only
    assert "psycopg-binary" in needed  # psycopg[binary]: an extra, followed
    assert all(canonicalize_name(n) == n for n in needed)
