"""Heads: normalised prototypes and the up-convolution decoder."""

from __future__ import annotations

import pytest
import torch

from ssl_core.heads import NormalizedLinear, UpConvDecoder


def test_normalized_linear_has_unit_prototypes() -> None:
    layer = NormalizedLinear(8, 5)
    with torch.no_grad():
        layer.weight.mul_(7.0)
    x = torch.randn(3, 8)
    w = layer.weight / layer.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer(x), x @ w.T)


def test_normalized_linear_learns_a_gain_when_asked() -> None:
    assert NormalizedLinear(8, 5).gain is None
    layer = NormalizedLinear(8, 5, learn_gain=True)
    with torch.no_grad():
        layer.gain.mul_(3.0)  # type: ignore[union-attr]
    x = torch.randn(3, 8)
    w = 3.0 * layer.weight / layer.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer(x), x @ w.T)
    layer(x.requires_grad_(), frozen=True).sum().backward()
    assert x.grad is not None
    assert layer.weight.grad is None
    assert layer.gain.grad is None  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [1, 4, 8, 12, 32])
def test_decoder_paints_the_requested_size(size: int) -> None:
    assert UpConvDecoder(24, 5, size, width=32)(torch.randn(2, 24)).shape == (2, 5, size, size)
