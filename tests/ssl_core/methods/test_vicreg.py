"""VICReg as a method: its views and expander, and the loss its defaults give."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_core.backbones import build_backbone
from ssl_core.methods.base import DataInfo
from ssl_core.methods.vicreg import VICReg, VICRegParams


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet18", "standard", 16)


def test_grayscale_images_give_two_colour_views_and_an_expansion_of_the_requested_size() -> None:
    method = VICReg(_resnet(), VICRegParams(hidden_dim=32, expander_dim=24), 24, DataInfo(8, 1))
    gray_28px = torch.rand(4, 1, 28, 28)
    v1, v2 = method.views(gray_28px, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (4, 3, 24, 24)
    assert method.expander(method.backbone.features(v1)).shape == (4, 24)
    out = method.training_step(gray_28px, torch.arange(4), torch.Generator().manual_seed(0))
    assert out.loss.ndim == 0
    assert torch.isfinite(out.loss)


def _official_vicreg_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of the official VICReg code (facebookresearch/vicreg, main_vicreg.py) with its defaults:
    25 · invariance + 25 · the mean of the two views' variance terms + 1 · their covariance terms."""
    n, d = x.shape
    repr_loss = F.mse_loss(x, y)
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    std_x, std_y = torch.sqrt(x.var(dim=0) + 1e-4), torch.sqrt(y.var(dim=0) + 1e-4)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    off_diagonal = ~torch.eye(d, dtype=torch.bool)
    cov_x, cov_y = (x.T @ x) / (n - 1), (y.T @ y) / (n - 1)
    cov_loss = cov_x[off_diagonal].pow(2).sum() / d + cov_y[off_diagonal].pow(2).sum() / d
    return 25.0 * repr_loss + 25.0 * std_loss + 1.0 * cov_loss


def test_the_default_loss_is_the_official_vicreg_loss() -> None:
    """The loss adds the two variance terms where the official code averages them: the default weights make
    the two the same loss."""
    method = VICReg(_resnet(), VICRegParams(), 16, DataInfo(8, 3))
    g = torch.Generator().manual_seed(0)
    z0 = 0.3 * torch.randn(16, 8, generator=g, dtype=torch.float64)
    z1 = z0 + 0.2 * torch.randn(16, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(method.criterion(z0, z1).double(), _official_vicreg_loss(z0, z1), rtol=1e-5, atol=1e-6)
