"""Method parameter models refuse unknown keys and out-of-range values, and say which."""

from __future__ import annotations

import pytest

from ssl_core.methods.simclr import SimCLRParams


def test_method_params_refuse_unknown_keys_and_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="temprature: unknown field"):
        SimCLRParams(temprature=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"temperature: must be greater than 0\.0, got 0\.0"):
        SimCLRParams(temperature=0.0)
