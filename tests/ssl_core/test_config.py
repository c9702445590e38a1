"""Training configurations refuse unknown keys and two budgets at once."""

from __future__ import annotations

import pytest

from ssl_core.config import TrainConfig


def test_config_refuses_unknown_keys_and_two_budgets() -> None:
    with pytest.raises(ValueError, match="learning_rat"):
        TrainConfig(learning_rat=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="either epochs or max_minutes"):
        TrainConfig(epochs=2, max_minutes=1.0)
    from ssl_core.config import DEFAULT_MAX_MINUTES

    default = TrainConfig()
    assert default.epochs is None
    assert default.max_minutes == DEFAULT_MAX_MINUTES
    assert TrainConfig(epochs=3).max_minutes is None
    assert TrainConfig(max_minutes=5).epochs is None
