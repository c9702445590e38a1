"""Colorization, after Zhang et al. 2016, "Colorful Image Colorization" (ECCV 2016).

From a view's luma the network classifies its colours over in-gamut CIE ab bins at 1/4 of its side, with
soft-encoded, rebalanced targets. Differs from the paper: the colour prior is a moving average of batch
histograms, and an up-convolutional decoder paints from pooled features. Needs colour images.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_core.augment import normalize, random_resized_crop
from ssl_core.backbones import Backbone
from ssl_core.heads import UpConvDecoder
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param

_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_WHITE = (0.950456, 1.0, 1.088754)
_DELTA = 6 / 29
_SOFT_NEIGHBOURS = 5


def luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] → (B, 1, H, W) luma."""
    return torch.einsum("c,bchw->bhw", x.new_tensor(_LUMA), x).unsqueeze(1)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] → CIE Lab (D65): (B, 3, H, W) → (B, 3, H, W), L in [0, 100], a and b within about ±110."""
    x = x.clamp(0.0, 1.0)
    lin = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,bjhw->bihw", x.new_tensor(_RGB_TO_XYZ), lin) / x.new_tensor(_WHITE).view(1, 3, 1, 1)
    f = torch.where(xyz > _DELTA**3, xyz.clamp(min=_DELTA**3) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


@functools.lru_cache(maxsize=8)
def _ab_bins(bin_size: float, levels: int) -> torch.Tensor:
    g = torch.linspace(0.0, 1.0, levels, dtype=torch.float64)
    rgb = torch.stack(torch.meshgrid(g, g, g, indexing="ij")).reshape(1, 3, -1, 1)
    cells = torch.round(rgb_to_lab(rgb)[0, 1:, :, 0] / bin_size).long() + 1000
    keys = torch.unique(cells[0] * 4096 + cells[1])
    return (torch.stack([keys // 4096, keys % 4096], dim=1) - 1000).float() * bin_size


def ab_bins(bin_size: float, levels: int = 65) -> torch.Tensor:
    """Centres (Q, 2), sorted by a then b, of the ab cells of side ``bin_size`` that a ``levels``³ sRGB lattice
    falls into: 261 bins at bin size 10, 75 at 20."""
    return _ab_bins(float(bin_size), levels).clone()


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, sigma: float, k: int = _SOFT_NEIGHBOURS) -> torch.Tensor:
    """Soft-encode ab values over bins (Zhang et al. 2016, §2.1): weights of the ``k`` nearest bin centres,
    Gaussian in the distance with std ``sigma``, summing to 1. Shapes: ab (N, 2), bins (Q, 2) → (N, Q)."""
    dist = torch.cdist(ab.float(), bins)
    near, idx = dist.topk(min(k, bins.shape[0]), dim=1, largest=False)
    w = torch.softmax(-near.pow(2) / (2 * sigma * sigma), dim=1)
    return torch.zeros(ab.shape[0], bins.shape[0], device=ab.device).scatter_(1, idx, w)


def rebalance_weights(prior: torch.Tensor, lam: float) -> torch.Tensor:
    """Class-rebalancing weights w ∝ ((1 − λ) p + λ / Q)⁻¹ normalised to Σ_q p_q w_q = 1 (Zhang et al. 2016,
    eq. 4). Shapes: prior (Q,) summing to 1 → (Q,)."""
    w = 1.0 / ((1.0 - lam) * prior + lam / prior.shape[0])
    return w / (prior * w).sum()


@dataclass(frozen=True, kw_only=True)
class ColorizationParams(MethodParams):
    output_stride: int = param(
        4, ge=1, le=8, description="the colour map is predicted at 1/output_stride of the view's side (4 in the paper)"
    )
    bin_size: float = param(
        10.0,
        ge=5.0,
        le=40.0,
        description="side of the ab quantisation cells (10 in the paper: 261 in-gamut bins; 20: 75)",
    )
    rebalance_lambda: float = param(
        0.5,
        ge=0.0,
        le=1.0,
        description="mix of the colour prior with a uniform "
        "distribution in the class-rebalancing weights (0.5 in the paper; 1: no "
        "rebalancing)",
    )
    prior_momentum: float = param(
        0.99,
        ge=0.0,
        lt=1.0,
        description="momentum of the moving average of the batches' colour histograms that estimates the colour prior",
    )
    crop_min_scale: float = param(
        0.5,
        gt=0.0,
        le=1.0,
        description="smallest crop area as a fraction of the image (random resized crop and flip, no colour jitter)",
    )
    decoder_width: int = param(
        256, ge=16, le=1024, description="channels of the decoder's first (4x4) map, halved at every upsampling"
    )


@METHODS.register("colorization")
class Colorization(SSLMethod[ColorizationParams]):
    recipe = Recipe(OptimizerDefaults("adamw", 1e-3, 0.05, why="a standard AdamW recipe for an encoder-decoder"))
    category = "pretext"
    summary = "predict quantised ab colours from lightness (Zhang et al. 2016, Colorful Image Colorization)"
    bins: torch.Tensor
    prior_sum: torch.Tensor
    prior_weight: torch.Tensor

    def __init__(self, backbone: Backbone, params: ColorizationParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.target_size = max(1, image_size // params.output_stride)
        self.register_buffer("bins", ab_bins(params.bin_size), persistent=False)
        q = self.bins.shape[0]
        self.decoder = UpConvDecoder(backbone.dim, q, self.target_size, params.decoder_width)
        self.register_buffer("prior_sum", torch.zeros(q))
        self.register_buffer("prior_weight", torch.zeros(()))
        self._pending_histogram: torch.Tensor | None = None

    @classmethod
    def check_data(cls, params: ColorizationParams, data: DataInfo) -> None:
        if data.channels == 1:
            raise ValueError("colorization needs colour images; this dataset is grayscale (1 channel)")

    def inputs_and_targets(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One augmented view per image, in float32 → (gray view (B, 3, S, S) in [0, 1], the normalised network
        input (B, 3, S, S), the target ab map (B, 2, s, s), s = S / output_stride)."""
        if images.shape[1] != 3:
            raise ValueError(f"colorization needs colour images; got {images.shape[1]} channel(s)")
        p = self.params
        with torch.autocast(images.device.type, enabled=False):
            view = random_resized_crop(
                images.float(),
                self.image_size,
                (p.crop_min_scale, 1.0),
                (3 / 4, 4 / 3),
                flip_p=0.5,
                generator=generator,
            ).clamp(0.0, 1.0)
            gray = luma(view).expand(-1, 3, -1, -1)
            ab = rgb_to_lab(view)[:, 1:]
            ab = F.adaptive_avg_pool2d(ab, self.target_size)
            return gray, normalize(gray), ab

    def colour_prior(self, histogram: torch.Tensor) -> torch.Tensor:
        """The prior estimate with ``histogram`` (Q,) folded in as the newest batch, without storing it."""
        m = self.params.prior_momentum
        total = m * self.prior_sum + (1 - m) * histogram
        return total / (m * self.prior_weight + (1 - m))

    def colour_loss(self, logits: torch.Tensor, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rebalanced soft cross-entropy. Shapes: logits (B, Q, s, s), ab (B, 2, s, s) → (loss, the batch's
        colour histogram (Q,))."""
        p = self.params
        with torch.autocast(logits.device.type, enabled=False):
            target = soft_encode(ab.permute(0, 2, 3, 1).reshape(-1, 2), self.bins, p.bin_size / 2)
            histogram = target.mean(dim=0)
            weights = rebalance_weights(self.colour_prior(histogram), p.rebalance_lambda)
            log_p = F.log_softmax(logits.float().permute(0, 2, 3, 1).reshape(-1, self.bins.shape[0]), dim=1)
            ce = -(target * log_p).sum(dim=1)
            loss = (weights[target.argmax(dim=1)] * ce).mean()
        return loss, histogram

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        _, x, ab = self.inputs_and_targets(images, generator)
        logits = self.decoder(self.backbone.features(x))
        loss, histogram = self.colour_loss(logits, ab)
        self._pending_histogram = histogram.detach()
        return StepOutput(loss)

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        if self._pending_histogram is None:
            return
        m = self.params.prior_momentum
        self.prior_sum.mul_(m).add_(self._pending_histogram, alpha=1 - m)
        self.prior_weight.mul_(m).add_(1 - m)
        self._pending_histogram = None
