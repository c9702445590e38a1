"""Choosing a run's precision by measurement: bf16 autocast only where it is faster than float32.

oneDNN answers "bf16 supported" on any AVX-512 CPU, but without AVX512-BF16 or AMX units it emulates bf16 and runs
a ResNet step at about half its float32 speed; and even with AMX, small feature maps gain nothing from bf16. So
``auto`` first asks the machine (native units, or a small probe network timed once per machine on CPUs that
emulate bf16) and then, on a CPU, times the run's own step in both precisions, cached per configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ssl_core.device import one_pixel_convs

Requested = Literal["auto", "bf16", "float32"]
Chosen = Literal["bf16", "float32"]

#: bf16 must beat float32 by this factor in the probe to be chosen: a tie is not worth bf16's rounding.
MIN_SPEEDUP = 1.1
PROBE_FORMAT = 1


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run trains in and why, in words a job's events can show."""

    precision: Chosen
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)


@dataclass(frozen=True)
class ProbeResult:
    """Images per second of the probe's forward and backward pass in each precision, on one machine."""

    machine: str
    float32_images_per_second: float
    bf16_images_per_second: float

    @property
    def speedup(self) -> float:
        return self.bf16_images_per_second / self.float32_images_per_second


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16_units(device: torch.device) -> str | None:
    """The name of the device's bf16 hardware (``AMX``, ``AVX512-BF16``, the GPU's name), or None."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type != "cpu":
        return None
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def machine_key(device: torch.device) -> str:
    """What the probe's result depends on: CPU model and flags, threads, and the torch build."""
    flags = ",".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma"))))
    parts = [device.type, cpu_model(), flags, str(torch.get_num_threads()), torch.__version__]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def default_cache_path() -> Path:
    """``JAGA_PRECISION_CACHE``, else ``precision-probe.json`` in the user's cache directory."""
    if os.environ.get("JAGA_PRECISION_CACHE"):
        return Path(os.environ["JAGA_PRECISION_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaga" / "precision-probe.json"


class _ProbeNet(nn.Module):
    """A ResNet-18-like stage stack at 32 px: the convolutions that dominate the methods' steps."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [nn.Conv2d(channels, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.contiguous(memory_format=torch.channels_last))


def time_both(
    step: Callable[[PrecisionChoice], None], images: int, device: torch.device, rounds: int = 3
) -> tuple[float, float]:
    """Images/s of ``step`` (which processes ``images`` images) in float32 and in bf16: one warm-up step each,
    then ``rounds`` alternating timed steps, the fastest of each kept (load from elsewhere only slows a step)."""
    choices = (PrecisionChoice("float32", "probe"), PrecisionChoice("bf16", "probe"))
    best = [math.inf, math.inf]
    for round_ in range(rounds + 1):
        for i, choice in enumerate(choices):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step(choice)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_ > 0:
                best[i] = min(best[i], time.perf_counter() - start)
    return images / best[0], images / best[1]


def measure_probe(device: torch.device, batch: int = 64, rounds: int = 3) -> ProbeResult:
    """Time the probe network's forward and backward pass at 32 px in float32 and under bf16 autocast."""
    torch.manual_seed(0)
    net = _ProbeNet().to(device).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32, device=device)

    def step(choice: PrecisionChoice) -> None:
        with choice.autocast(device):
            loss = net(x).float().square().mean()
        loss.backward()
        net.zero_grad(set_to_none=True)

    fp32, bf16 = time_both(step, batch, device, rounds)
    return ProbeResult(machine_key(device), fp32, bf16)


def _cached(key: str, measure: Callable[[], ProbeResult], cache_path: Path | None) -> ProbeResult:
    """``measure()``'s result for ``key``, measured once and kept in ``cache_path``."""
    path = cache_path or default_cache_path()
    cache: dict[str, dict[str, object]] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict) and loaded.get("format") == PROBE_FORMAT:
            cache = loaded.get("machines", {})
    entry = cache.get(key)
    if isinstance(entry, dict):
        with contextlib.suppress(TypeError, ValueError):
            result = ProbeResult(**entry)  # type: ignore[arg-type]
            if result.float32_images_per_second > 0 and result.bf16_images_per_second > 0:
                return result
    result = replace(measure(), machine=key)
    cache[key] = asdict(result)
    with contextlib.suppress(OSError):  # a read-only home only costs a probe per process
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"format": PROBE_FORMAT, "machines": cache}, f, indent=1)
        os.replace(tmp, path)
    return result


def cached_probe(device: torch.device, cache_path: Path | None = None) -> ProbeResult:
    """The probe's result for this machine, measured once and kept in ``cache_path`` (keyed by ``machine_key``)."""
    return _cached(machine_key(device), lambda: measure_probe(device), cache_path)


def _figures(probe: ProbeResult) -> str:
    return f"{probe.bf16_images_per_second:.0f} img/s in bf16 against {probe.float32_images_per_second:.0f} in float32"


def bf16_pays(device: torch.device, cache_path: Path | None = None) -> tuple[bool, str]:
    """Whether bf16 autocast is faster than float32 on ``device``, and why: native units, or the probe's figures."""
    units = native_bf16_units(device)
    if units is not None:
        return True, f"native bf16 ({units})"
    if device.type == "cpu" and not (
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        return False, "this CPU has no bf16 kernels"
    if device.type not in ("cpu", "cuda"):
        return False, f"bf16 autocast is not used on {device.type}"
    probe = cached_probe(device, cache_path)
    figures = f"probe: {_figures(probe)}"
    if probe.speedup >= MIN_SPEEDUP:
        return True, f"bf16 is emulated here but faster ({figures})"
    return False, f"bf16 is emulated here and not faster ({figures})"


@dataclass(frozen=True)
class StepProbe:
    """One training step of a run's own configuration, to time in each precision: ``step(choice)`` runs it on
    ``images`` images without changing the run's state; ``key`` names the configuration (cache key)."""

    key: str
    images: int
    step: Callable[[PrecisionChoice], None]


def choose_precision(
    requested: Requested,
    device: torch.device,
    backbone: nn.Module | None = None,
    image_size: int | None = None,
    cache_path: Path | None = None,
    step_probe: StepProbe | None = None,
) -> PrecisionChoice:
    """The precision a run on ``device`` trains ``backbone`` at ``image_size`` in. ``float32`` and ``bf16`` are
    obeyed, except that bf16 is never used where a strided convolution meets a 1x1 map (``one_pixel_convs``:
    oneDNN's bf16 backward poisons those gradients); ``auto`` takes bf16 where ``bf16_pays`` and, on a CPU given
    the run's ``step_probe``, where the run's own step is faster in bf16 too (cached per configuration): bf16
    units do not make every step faster."""
    if requested == "float32":
        return PrecisionChoice("float32", "float32 requested")
    if backbone is not None and image_size is not None and device.type == "cpu":
        convs = one_pixel_convs(backbone, image_size)
        if convs:
            return PrecisionChoice(
                "float32",
                f"float32: {convs[0]} sees a 1x1 map at {image_size} px, where bf16 gradients are unreliable",
            )
    if requested == "bf16":
        return PrecisionChoice("bf16", "bf16 requested")
    pays, why = bf16_pays(device, cache_path)
    if not pays or step_probe is None or device.type != "cpu":
        return PrecisionChoice("bf16" if pays else "float32", why)
    key = hashlib.sha256(f"{machine_key(device)}|{step_probe.key}".encode()).hexdigest()[:16]
    probe = _cached(
        key, lambda: ProbeResult(key, *time_both(step_probe.step, step_probe.images, device, rounds=2)), cache_path
    )
    if probe.speedup >= MIN_SPEEDUP:
        return PrecisionChoice("bf16", f"{why}; this configuration: {_figures(probe)}")
    return PrecisionChoice("float32", f"{why}, but this configuration is not faster in bf16: {_figures(probe)}")
