"""Projection heads, built from one configurable MLP."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """An MLP given as ``(in, out, batch_norm, relu)`` per layer.

    Example: ``ProjectionHead([(512, 2048, True, True), (2048, 128, False, False)])``.
    Shapes: (B, in of the first layer) → (B, out of the last layer).
    """

    def __init__(self, layers: list[tuple[int, int, bool, bool]]) -> None:
        modules: list[nn.Module] = []
        for d_in, d_out, batch_norm, relu in layers:
            modules.append(nn.Linear(d_in, d_out, bias=not batch_norm))
            if batch_norm:
                modules.append(nn.BatchNorm1d(d_out))
            if relu:
                modules.append(nn.ReLU(inplace=True))
        super().__init__(*modules)


class SimCLRProjectionHead(ProjectionHead):
    """SimCLR's head (Chen et al. 2020; v2 uses more layers): Linear-BN-ReLU then Linear."""

    def __init__(self, input_dim: int = 512, hidden_dim: int = 2048, output_dim: int = 128) -> None:
        super().__init__([(input_dim, hidden_dim, True, True), (hidden_dim, output_dim, False, False)])
