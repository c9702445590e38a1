"""Self-supervised losses, each a typed ``nn.Module`` documenting its paper, shapes and errors."""

from ssl_core.losses.ntxent import NTXentLoss

__all__ = ["NTXentLoss"]
