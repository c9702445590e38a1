"""Inputs and comparisons shared by the loss tests: float64 references, float32 modules."""

from __future__ import annotations

import math

import torch

SHAPES = [(2, 1), (2, 5), (3, 4), (8, 16), (16, 3)]


def correlated_pair(b: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 leaves; z1 is correlated with z0 and the columns have spreads from 0.3 to 2 so that VICReg's
    variance hinge is active on some dimensions and not on others."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.3, 2.0, d, dtype=torch.float64)
    z0 = torch.randn(b, d, generator=g, dtype=torch.float64) * spread
    z1 = 0.6 * z0 + 0.8 * torch.randn(b, d, generator=g, dtype=torch.float64) * spread
    return z0.requires_grad_(), z1.requires_grad_()


def decorrelated(b: int, d: int, std: float, seed: int = 0) -> torch.Tensor:
    """(B, D), B > D, with zero-mean, mutually orthogonal columns of (unbiased) standard deviation ``std``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(dim=0))  # columns stay zero-mean: combinations of centred columns
    return q * std * math.sqrt(b - 1)


def assert_matches_reference(loss: torch.Tensor, expected: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> None:
    """Value and gradients of the float32 module output against the float64 reference."""
    assert loss.dtype == torch.float32
    assert loss.shape == ()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(loss, inputs)
    expected_grads = torch.autograd.grad(expected, inputs)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64, grad: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x.requires_grad_(grad)


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt(torch.sum(v * v))


def assert_values_and_grads(loss: torch.Tensor, expected: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    # Inputs outside the graph (a crop that only provides targets) get zero gradients.
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    expected_grads = torch.autograd.grad(expected, inputs, allow_unused=True, materialize_grads=True)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
