"""MAE: masked autoencoders (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022).

The ViT encodes the visible (by default 25 %) patches of a view; a light decoder with mask tokens and sine-cosine
position embeddings predicts the masked patches' normalised pixels (MSE). ViT only. Differs from the paper:
a 2-block, 128-wide decoder (paper: 8 × 512), and masks from the training generator so resumes repeat them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from timm.models.vision_transformer import Block
from torch import nn

from ssl_core.augment import ViewConfig
from ssl_core.backbones import Backbone, ViTBackbone
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into square patches in row-major order (a ViT's token order), each flattened as (row, column,
    channel). Shapes: (B, C, H, W) → (B, (H/p)·(W/p), p·p·C). Raises ``ValueError`` if p does not divide H, W."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"patch_size {p} must divide the image sides {h}x{w}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int, channels: int = 3) -> torch.Tensor:
    """The inverse of :func:`patchify`. Shapes: (B, (H/p)·(W/p), p·p·C) → (B, C, H, W)."""
    b, n, d = patches.shape
    p = patch_size
    gh, gw = height // p, width // p
    if gh * gw != n or d != p * p * channels:
        raise ValueError(f"expected (B, {gh * gw}, {p * p * channels}) patches, got {tuple(patches.shape)}")
    x = patches.reshape(b, gh, gw, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, height, width)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """round(N · (1 − mask_ratio)), at least 1 and at most N − 1 (something to encode and something to predict)."""
    return min(num_patches - 1, max(1, round(num_patches * (1 - mask_ratio))))


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An independent random mask per image: ``(keep, mask, restore)``, ``keep`` (B, n_visible) int64 visible
    indices, ``mask`` (B, N) float with 1 on masked patches, ``restore`` (B, N) int64 that puts tokens back."""
    if num_patches < 2:
        raise ValueError(f"masking needs at least 2 patches, got {num_patches}")
    n_keep = num_visible(num_patches, mask_ratio)
    noise = torch.rand(batch, num_patches, generator=generator, device=device)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    keep = shuffle[:, :n_keep]
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :n_keep] = 0.0
    mask = mask.gather(1, restore)
    return keep, mask, restore


def masked_patch_loss(
    pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix_loss: bool = True
) -> torch.Tensor:
    """MAE's loss: per-patch MSE over the masked patches only, in float32, targets normalised per patch with
    ``norm_pix_loss``. Shapes: pred (B, N, p·p·C), images (B, C, H, W), mask (B, N) → scalar."""
    target = patchify(images.float(), patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)


def sincos_position_embedding(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (Vaswani et al. 2017, per axis), half the channels for the row,
    half for the column. Shapes: → (grid_h · grid_w, dim). Raises ``ValueError`` unless 4 divides ``dim``."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )

    def axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([axis(rows), axis(cols)], dim=1).float()


class MAEDecoder(nn.Module):
    """MAE's light decoder: encoded tokens (class token + visible) → predicted pixels of every patch.
    Shapes: ``forward(latent, restore)``: (B, 1 + n_visible, encoder_dim), (B, N) → (B, N, patch_size² · 3)."""

    pos_embed: torch.Tensor

    def __init__(
        self, encoder_dim: int, grid: int, patch_size: int, dim: int = 128, depth: int = 2, num_heads: int = 4
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_position_embedding(dim, grid, grid)[None], persistent=False)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_size * patch_size * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(latent)
        cls, visible = x[:, :1], x[:, 1:]
        b, n = restore.shape
        masks = self.mask_token.to(x.dtype).expand(b, n - visible.shape[1], -1)
        tokens = torch.cat([visible, masks], dim=1)
        tokens = tokens.gather(1, restore[..., None].expand(-1, -1, tokens.shape[-1]))
        tokens = tokens + self.pos_embed.to(tokens.dtype)
        x = self.norm(self.blocks(torch.cat([cls, tokens], dim=1)))
        return self.pred(x[:, 1:])


@dataclass(frozen=True, kw_only=True)
class MAEParams(MethodParams):
    mask_ratio: float = param(0.75, gt=0.0, lt=1.0, description="fraction of the patches masked per image")
    norm_pix_loss: bool = param(True, description="normalise every target patch by its own mean and variance")
    decoder_dim: int = param(
        128, ge=16, le=1024, description="decoder width; a multiple of 4 and of decoder_heads (paper: 512)"
    )
    decoder_depth: int = param(2, ge=1, le=12, description="number of decoder transformer blocks (paper: 8)")
    decoder_heads: int = param(4, ge=1, le=16, description="attention heads per decoder block (paper: 16)")
    crop_min_scale: float = param(
        0.2,
        gt=0.0,
        le=1.0,
        description="smallest crop area as a fraction of the "
        "image (random resized crop and flip, no colour jitter; paper: 0.2)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoder_dim % 4 or self.decoder_dim % self.decoder_heads:
            raise ValueError(
                f"decoder_dim ({self.decoder_dim}) must be a multiple of 4 (sine-cosine position "
                f"embeddings) and of decoder_heads ({self.decoder_heads})"
            )


@METHODS.register("mae")
class MAE(SSLMethod[MAEParams]):
    recipe = Recipe(OptimizerDefaults("adamw", 1.5e-4, 0.05, adamw_betas=(0.9, 0.95), why="the paper's"))
    families = ("vit",)
    category = "transformer"
    summary = "reconstruct the pixels of 75% masked patches from the visible ones (MAE: He et al. 2022)"

    def __init__(self, backbone: Backbone, params: MAEParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        if not isinstance(backbone, ViTBackbone):
            raise ValueError(f"mae does not support {backbone.family} backbones: it needs a Vision Transformer")
        self.patch_size = backbone.patch_size
        self.grid = image_size // self.patch_size
        self.decoder = MAEDecoder(
            backbone.dim, self.grid, self.patch_size, params.decoder_dim, params.decoder_depth, params.decoder_heads
        )
        self.view_configs = (
            ViewConfig(size=image_size, crop_scale=(params.crop_min_scale, 1.0), jitter_p=0.0, grayscale_p=0.0),
        )

    def reconstruct(self, views: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask, encode and decode normalised views (B, 3, S, S): (predicted patches (B, N, p²·3), mask (B, N))."""
        backbone = cast(ViTBackbone, self.backbone)
        tokens = backbone.patch_tokens(views)
        b, n, d = tokens.shape
        keep, mask, restore = random_masking(b, n, self.params.mask_ratio, generator, tokens.device)
        visible = tokens.gather(1, keep[..., None].expand(-1, -1, d))
        latent = backbone.encode(visible)
        return self.decoder(latent, restore), mask

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        (views,) = self.views(images, generator)
        pred, mask = self.reconstruct(views, generator)
        loss = masked_patch_loss(pred, views, mask, self.patch_size, self.params.norm_pix_loss)
        return StepOutput(loss)
