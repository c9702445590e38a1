"""Device selection and mixed-precision capability."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class DeviceUnavailable(ValueError):
    """A device was asked for that this process cannot use."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are checked to exist here
    (``DeviceUnavailable`` says why not), so a misconfigured process fails at once and says so."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceUnavailable(f"{name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceUnavailable(f"device {name!r} asked for, but Jaga runs on cpu or cuda")
    if not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceUnavailable(
            f"device {name!r} asked for, but PyTorch {torch.__version__} ({build}) finds no usable CUDA device here"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceUnavailable(f"device {name!r} asked for, but this machine has {count} CUDA device(s)")
    return device


def supports_bf16(device: torch.device) -> bool:
    """True where bf16 autocast runs on native bf16 units (recent GPUs; CPUs with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def one_pixel_convs(backbone: nn.Module, image_size: int) -> list[str]:
    """Names of the strided convolutions, kernel larger than 1x1, that see a 1x1 map when ``backbone`` embeds
    ``image_size`` images (ResNet layer4 at 16 px behind the standard stem). oneDNN's bf16 backward leaves
    garbage in such kernels' gradients, so the trainer runs these networks in fp32
    (docs/experiments/2026-12-04-method-defaults.md)."""
    found: list[str] = []

    def probe(name: str, conv: nn.Conv2d) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if max(conv.kernel_size) > 1 and max(conv.stride) > 1 and tuple(args[0].shape[-2:]) == (1, 1):
                found.append(name)

        return hook

    handles = [
        m.register_forward_pre_hook(probe(n, m)) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)
    ]
    was_training = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(torch.zeros(1, 3, image_size, image_size, device=next(backbone.parameters()).device))
    finally:
        backbone.train(was_training)
        for h in handles:
            h.remove()
    return found
