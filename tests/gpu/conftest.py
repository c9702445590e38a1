"""The CUDA device of the ``gpu`` tests (tests marked ``gpu`` are skipped without one: tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def cuda() -> torch.device:
    if not torch.cuda.is_available():  # also when run alone (``--confcutdir=tests/gpu``, as bench/device/run.sh does)
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")
