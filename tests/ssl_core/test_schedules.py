"""warmup_cosine against its formula written step by step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssl_core.schedules import warmup_cosine


def warmup_cosine_reference(base: float, total: int, warmup: int, final: float) -> list[float]:
    """Step i < warmup: base·(i+1)/warmup. Step i >= warmup, j = i - warmup, n = total - warmup:
    final + (base - final)·(1 + cos(π·j/n))/2."""
    values = []
    for i in range(total):
        if i < warmup:
            values.append(base * (i + 1) / warmup)
        else:
            j, n = i - warmup, total - warmup
            values.append(final + (base - final) * (1 + math.cos(math.pi * j / n)) / 2)
    return values


CASES = [
    # base, total, warmup, final
    (0.3, 1, 0, 0.0),
    (0.3, 1, 1, 0.0),
    (1.0, 10, 0, 0.0),
    (1.0, 10, 3, 0.1),
    (0.05, 100, 10, 0.0),
    (2.0, 50, 50, 0.0),
    (0.5, 7, 2, 0.5),
]


@pytest.mark.parametrize(("base", "total", "warmup", "final"), CASES)
def test_matches_reference(base: float, total: int, warmup: int, final: float) -> None:
    got = warmup_cosine(base, total, warmup, final)
    assert got.shape == (total,)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, warmup_cosine_reference(base, total, warmup, final), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("warmup", [1, 5, 20])
def test_warmup_rises_linearly_from_a_positive_value_to_base(warmup: int) -> None:
    values = warmup_cosine(0.4, 100, warmup)
    assert values[0] == pytest.approx(0.4 / warmup)
    assert (np.diff(values[:warmup]) > 0).all()
    assert values[warmup - 1] == pytest.approx(0.4)
    assert values.max() == pytest.approx(0.4)


@pytest.mark.parametrize("warmup", [0, 10])
def test_decay_is_monotonic_and_ends_near_final(warmup: int) -> None:
    base, final, total = 1.0, 0.01, 1000
    values = warmup_cosine(base, total, warmup, final)
    assert (np.diff(values[warmup:]) <= 0).all()
    n = total - warmup
    # The last step is one step short of the end of the cosine: (base - final)·(1 - cos(π/n))/2 above final.
    assert final < values[-1] <= final + (base - final) * (math.pi / n) ** 2 / 4
    assert values.min() >= final


@pytest.mark.parametrize(("total", "warmup"), [(0, 0), (-1, 0), (10, -1), (10, 11)])
def test_refuses_bad_lengths(total: int, warmup: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        warmup_cosine(0.1, total, warmup)
