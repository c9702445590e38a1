"""The CUDA device of the ``gpu`` tests (tests marked ``gpu`` are skipped without one: tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def cuda() -> torch.device:
    return torch.device("cuda")
