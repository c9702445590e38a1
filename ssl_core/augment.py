"""Batched image augmentations on the training device: (B, C, H, W) floats in [0, 1], C = 1 or 3, with
per-image parameters from ``generator``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

# ITU-R 601 luma weights, as in torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)
# ImageNet statistics; grayscale uses the mean of the RGB constants.
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)


@dataclass(frozen=True)
class ViewConfig:
    """Parameters of one augmented view (SimCLR, Chen et al. 2020, Appendix A, scaled for small images)."""

    size: int
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.0)  # in pixels of the output view
    solarize_p: float = 0.0


def byol_view_configs(size: int, crop_min_scale: float) -> tuple[ViewConfig, ViewConfig]:
    """BYOL's two view distributions (Grill et al. 2020, Table 6): colour jitter (0.4, 0.4, 0.2, 0.1) with
    probability 0.8, grayscale 0.2, Gaussian blur with probability 1.0 and 0.1, solarization 0.0 and 0.2."""
    first = ViewConfig(
        size=size,
        crop_scale=(crop_min_scale, 1.0),
        jitter_p=0.8,
        brightness=0.4,
        contrast=0.4,
        saturation=0.2,
        hue=0.1,
        grayscale_p=0.2,
        blur_p=1.0,
        solarize_p=0.0,
    )
    return first, replace(first, blur_p=0.1, solarize_p=0.2)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio``, optionally flip, resize; crops
    that would leave the image shrink to fit. Shapes: (B, C, H, W) → (B, C, size, size)."""
    b, _, h, w = x.shape
    dev = x.device
    area = _uniform(b, scale[0], scale[1], generator, dev)
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), generator, dev)
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect * h / w).clamp(max=1.0)
    ch = torch.sqrt(area / aspect * w / h).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator, device=dev) * 2 - 1) * (1 - cw)
    cy = (torch.rand(b, generator=generator, device=dev) * 2 - 1) * (1 - ch)
    flip = torch.where(torch.rand(b, generator=generator, device=dev) < flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = cw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own Gaussian of standard deviation ``sigma[i]`` pixels (separable, reflect
    padding, kernel radius ceil(3σ) of the largest σ). Shapes: x (B, C, H, W), sigma (B,) → (B, C, H, W)."""
    b, c, h, w = x.shape
    radius = max(1, min(math.ceil(3 * float(sigma.max())), (min(h, w) - 1) // 2))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert every value at or above ``threshold`` (BYOL, Grill et al. 2020, Appendix B)."""
    return torch.where(x >= threshold, 1.0 - x, x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) → (B, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _rotate_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate chroma in YIQ space by ``shift`` turns (a fraction of 2π) per image; luma is unchanged."""
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    from_yiq = torch.linalg.inv(to_yiq)
    angle = shift * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1] = cos
    rot[:, 1, 2] = -sin
    rot[:, 2, 1] = sin
    rot[:, 2, 2] = cos
    m = from_yiq @ rot @ to_yiq
    return torch.einsum("bij,bjhw->bihw", m, x)


def color_jitter(
    x: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Jitter brightness, contrast, saturation and hue in that order, per image, as torchvision's ``ColorJitter``
    (factors in [1 - v, 1 + v], hue a shift in [-hue, hue] turns); saturation and hue skip 1-channel images."""
    b, c = x.shape[:2]
    dev = x.device
    if brightness > 0:
        x = (x * _per_image(_uniform(b, 1 - brightness, 1 + brightness, generator, dev))).clamp_(0, 1)
    if contrast > 0:
        mean = (x if c == 1 else _gray(x)).mean(dim=(1, 2, 3), keepdim=True)
        f = _per_image(_uniform(b, 1 - contrast, 1 + contrast, generator, dev))
        x = ((x - mean) * f + mean).clamp_(0, 1)
    if c == 3 and saturation > 0:
        gray = _gray(x)
        f = _per_image(_uniform(b, 1 - saturation, 1 + saturation, generator, dev))
        x = ((x - gray) * f + gray).clamp_(0, 1)
    if c == 3 and hue > 0:
        x = _rotate_hue(x, _uniform(b, -hue, hue, generator, dev)).clamp_(0, 1)
    return x


def _apply_to_subset(
    x: torch.Tensor, p: float, fn: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator | None
) -> torch.Tensor:
    """Apply ``fn`` to a random subset of the batch, each image chosen with probability ``p``."""
    if p <= 0:
        return x
    chosen = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    if p >= 1 or bool(chosen.all()):
        return fn(x)
    idx = chosen.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    x = x.clone()
    x[idx] = fn(x[idx]).to(x.dtype)
    return x


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Normalise channels and return three channels: (B, C, H, W) in [0, 1] → (B, 3, H, W)."""
    mean, std = (GRAY_MEAN, GRAY_STD) if x.shape[1] == 1 else (RGB_MEAN, RGB_STD)
    x = (x - x.new_tensor(mean).view(1, -1, 1, 1)) / x.new_tensor(std).view(1, -1, 1, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def augment_view(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One augmented, normalised view of a batch, in float32 even under autocast: (B, C, H, W) in [0, 1] →
    (B, 3, size, size)."""
    with torch.autocast(x.device.type, enabled=False):
        return _augment_view(x.float(), cfg, generator)


def _augment_view(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator | None) -> torch.Tensor:
    x = random_resized_crop(x, cfg.size, cfg.crop_scale, cfg.crop_ratio, cfg.flip_p, generator)
    x = _apply_to_subset(
        x,
        cfg.jitter_p,
        lambda t: color_jitter(t, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, generator),
        generator,
    )
    if x.shape[1] == 3:
        x = _apply_to_subset(x, cfg.grayscale_p, lambda t: _gray(t).expand(-1, 3, -1, -1), generator)
    if cfg.blur_p > 0:
        lo, hi = cfg.blur_sigma
        x = _apply_to_subset(
            x,
            cfg.blur_p,
            lambda t: gaussian_blur(t, _uniform(t.shape[0], lo, hi, generator, t.device).clamp(min=1e-3)),
            generator,
        )
    x = _apply_to_subset(x, cfg.solarize_p, solarize, generator)
    return normalize(x)


def eval_transform(x: torch.Tensor, size: int) -> torch.Tensor:
    """The deterministic evaluation transform, shared by evaluation, embeddings and indexes: resize and
    normalise. Shapes: (B, C, H, W) uint8 or float in [0, 1] → (B, 3, size, size) float."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalize(x)


def local_view_size(image_size: int, multiple: int = 1) -> int:
    """Side of a local crop: 3/7 of the global view (96 for 224 in SwAV and DINO), rounded to ``multiple``
    (a ViT's patch size), at least one ``multiple`` and at least 8 px."""
    size = max(8, round(image_size * 3 / 7))
    return max(multiple, round(size / multiple) * multiple)


def multi_crop(
    x: torch.Tensor,
    global_view: ViewConfig,
    local_view: ViewConfig,
    n_global: int,
    n_local: int,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Multi-crop (Caron et al. 2020, SwAV §3.2): ``n_global`` views under ``global_view`` then ``n_local`` under
    ``local_view``. Shapes: (B, C, H, W) → a list of (B, 3, s, s), s the view's size."""
    if n_global < 1 or n_local < 0:
        raise ValueError(f"need n_global >= 1 and n_local >= 0, got {n_global} and {n_local}")
    return [augment_view(x, global_view, generator) for _ in range(n_global)] + [
        augment_view(x, local_view, generator) for _ in range(n_local)
    ]


def tile_input_size(tile: int, backbone: torch.nn.Module) -> int:
    """Side tiles are resized to before the backbone: at least 16 px, a multiple of a ViT's patch size, and with
    no strided convolution on a 1x1 map (``ssl_core.device.one_pixel_convs``: bf16 kernels misbehave there)."""
    from ssl_core.device import one_pixel_convs

    multiple = getattr(backbone, "patch_size", 1)
    size = -(-max(16, tile) // multiple) * multiple
    while one_pixel_convs(backbone, size):
        size += multiple
    return size


def _tile_windows(
    b: int,
    grid: int,
    cell: int,
    tile: int,
    margin: int,
    generator: torch.Generator | None,
    device: torch.device,
    jitter: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel rows and columns, each (b, grid², tile), of a ``tile``-sided window per cell of a ``grid``×``grid``
    grid of ``cell``-sided cells from (``margin``, ``margin``), row-major; offsets random per image and cell, or
    centred without ``jitter``."""
    n = grid * grid
    if jitter:
        span = cell - tile + 1
        oy = torch.randint(0, span, (b, n), generator=generator, device=device)
        ox = torch.randint(0, span, (b, n), generator=generator, device=device)
    else:
        oy = ox = torch.full((b, n), (cell - tile) // 2, dtype=torch.long, device=device)
    g = torch.arange(n, device=device)
    ar = torch.arange(tile, device=device)
    rows = (margin + (g // grid) * cell)[None, :, None] + oy[:, :, None] + ar
    cols = (margin + (g % grid) * cell)[None, :, None] + ox[:, :, None] + ar
    return rows, cols


def grid_tiles(
    x: torch.Tensor, grid: int, tile: int, generator: torch.Generator | None = None, jitter: bool = True
) -> torch.Tensor:
    """A ``tile``-sided crop from each cell of a ``grid``×``grid`` grid, at a random offset per image and cell so
    edges do not give the layout away, or centred without ``jitter``.
    Shapes: (B, C, H, W) → (B, grid², C, tile, tile), cells row-major."""
    b, _c, h, w = x.shape
    cell = min(h, w) // grid
    if not 1 <= tile <= cell:
        raise ValueError(f"tile must be between 1 and the cell size {cell}, got {tile}")
    rows, cols = _tile_windows(b, grid, cell, tile, 0, generator, x.device, jitter)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    tiles = x.permute(0, 2, 3, 1)[batch, rows[:, :, :, None], cols[:, :, None, :]]
    return tiles.permute(0, 1, 4, 2, 3)


def assemble_tiles(tiles: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lay tiles out as one image: tile j into cell j (row-major) of a centred grid, at a random offset; gaps
    take the darkest tile value. Shapes: (B, grid², C, t, t) → (B, C, size, size), t at most a cell."""
    b, n, c, t, _ = tiles.shape
    grid = math.isqrt(n)
    cell = size // grid
    if grid * grid != n or not 1 <= t <= cell:
        raise ValueError(f"need a square number of tiles no larger than the cell size {cell}, got {n} of side {t}")
    rows, cols = _tile_windows(b, grid, cell, t, (size - grid * cell) // 2, generator, tiles.device)
    fill = tiles.amin(dim=(1, 2, 3, 4))
    canvas = fill[:, None, None, None].expand(b, size, size, c).clone()
    batch = torch.arange(b, device=tiles.device)[:, None, None, None]
    canvas[batch, rows[:, :, :, None], cols[:, :, None, :]] = tiles.permute(0, 1, 3, 4, 2)
    return canvas.permute(0, 3, 1, 2)


def tile_inputs(tiles: torch.Tensor, size: int) -> torch.Tensor:
    """Tiles as the backbone takes them: standardised one by one, then resized to ``size``.
    Shapes: (N, C, t, t) → (N, C, size, size)."""
    x = standardize_per_image(tiles)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def standardize_per_image(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance per image and channel (jigsaw's per-tile normalisation, Noroozi & Favaro 2016
    §3.2). Shapes: (N, C, H, W) → same."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)
