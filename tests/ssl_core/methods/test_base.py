"""Method parameter models refuse unknown keys and out-of-range values, and say which."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ssl_core.methods.simclr import SimCLRParams


def test_method_params_refuse_unknown_keys_and_out_of_range_values() -> None:
    with pytest.raises(ValidationError, match="temprature"):
        SimCLRParams(temprature=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="temperature"):
        SimCLRParams(temperature=0.0)
