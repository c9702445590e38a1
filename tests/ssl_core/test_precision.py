"""Precision by measurement: native bf16 units, the cached probe elsewhere, forced precisions, and the 1x1-map
exception."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_core import precision
from ssl_core.backbones import build_backbone
from ssl_core.config import TrainConfig
from ssl_core.precision import ProbeResult, cached_probe, choose_precision, machine_key
from ssl_core.train import Trainer, build_method

CPU = torch.device("cpu")


@pytest.fixture
def no_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU like Ice Lake: AVX-512 but neither AVX512-BF16 nor AMX, so oneDNN would emulate bf16."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw", "fma"})
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)


def _fake_probe(monkeypatch: pytest.MonkeyPatch, fp32: float, bf16: float) -> list[int]:
    calls: list[int] = []

    def measure(device: torch.device, **_: object) -> ProbeResult:
        calls.append(1)
        return ProbeResult(machine_key(device), fp32, bf16)

    monkeypatch.setattr(precision, "measure_probe", measure)
    return calls


@pytest.mark.parametrize(("flags", "units"), [({"amx_bf16", "avx512_bf16"}, "AMX"), ({"avx512_bf16"}, "AVX512-BF16")])
def test_native_units_choose_bf16_without_a_probe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: set[str], units: str
) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags | {"avx512f"})
    calls = _fake_probe(monkeypatch, 100.0, 50.0)
    choice = choose_precision("auto", CPU, cache_path=tmp_path / "probe.json")
    assert (choice.precision, choice.reason) == ("bf16", f"native bf16 ({units})")
    assert choice.autocast_dtype == torch.bfloat16
    assert calls == []


@pytest.mark.usefixtures("no_bf16_units")
def test_emulated_bf16_slower_than_float32_trains_in_float32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_probe(monkeypatch, fp32=738.0, bf16=334.0)  # the Ice Lake figures
    choice = choose_precision("auto", CPU, cache_path=tmp_path / "probe.json")
    assert choice.precision == "float32"
    assert choice.autocast_dtype is None
    assert choice.reason == "bf16 is emulated here and not faster (probe: 334 img/s in bf16 against 738 in float32)"


@pytest.mark.usefixtures("no_bf16_units")
def test_emulated_bf16_is_chosen_only_past_the_margin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_probe(monkeypatch, fp32=100.0, bf16=105.0)
    assert choose_precision("auto", CPU, cache_path=tmp_path / "a.json").precision == "float32"
    _fake_probe(monkeypatch, fp32=100.0, bf16=100.0 * precision.MIN_SPEEDUP)
    assert choose_precision("auto", CPU, cache_path=tmp_path / "b.json").precision == "bf16"


@pytest.mark.usefixtures("no_bf16_units")
def test_probe_runs_once_per_machine_and_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "cache" / "probe.json"
    calls = _fake_probe(monkeypatch, 700.0, 300.0)
    first = cached_probe(CPU, path)
    again = cached_probe(CPU, path)
    assert calls == [1]
    assert first == again
    stored = json.loads(path.read_text())
    assert stored["machines"][machine_key(CPU)]["bf16_images_per_second"] == 300.0
    # Another thread count is another machine as far as speed goes: it is measured afresh.
    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)
    try:
        cached_probe(CPU, path)
    finally:
        torch.set_num_threads(before)
    assert calls == [1, 1]
    assert len(json.loads(path.read_text())["machines"]) == 2


@pytest.mark.usefixtures("no_bf16_units")
def test_a_corrupt_cache_is_measured_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "probe.json"
    path.write_text("{not json")
    calls = _fake_probe(monkeypatch, 700.0, 300.0)
    assert cached_probe(CPU, path).speedup == pytest.approx(300 / 700)
    assert calls == [1]
    assert json.loads(path.read_text())["format"] == precision.PROBE_FORMAT


def test_the_real_probe_measures_both_precisions() -> None:
    result = precision.measure_probe(CPU, batch=4, rounds=1)
    assert result.float32_images_per_second > 0
    assert result.bf16_images_per_second > 0
    assert result.machine == machine_key(CPU)


@pytest.mark.usefixtures("no_bf16_units")
def test_forced_precisions_are_obeyed_without_a_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_probe(monkeypatch, 100.0, 10.0)
    assert choose_precision("bf16", CPU, cache_path=tmp_path / "p.json") == precision.PrecisionChoice(
        "bf16", "bf16 requested"
    )
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    assert choose_precision("float32", CPU).precision == "float32"
    assert calls == []


def test_one_pixel_maps_train_in_float32_even_when_bf16_is_forced() -> None:
    backbone = build_backbone("resnet18", "standard", 16, None)  # layer4 meets a 1x1 map at 16 px
    choice = choose_precision("bf16", CPU, backbone, 16)
    assert choice.precision == "float32"
    assert "1x1 map at 16 px" in choice.reason
    assert choose_precision("bf16", CPU, backbone, 32).precision == "bf16"


def test_cpu_without_bf16_kernels_never_probes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    calls = _fake_probe(monkeypatch, 100.0, 1000.0)
    assert choose_precision("auto", CPU, cache_path=tmp_path / "p.json") == precision.PrecisionChoice(
        "float32", "this CPU has no bf16 kernels"
    )
    assert calls == []


def _sleeping_step(fp32_seconds: float, bf16_seconds: float, calls: list[str]) -> precision.StepProbe:
    def step(choice: precision.PrecisionChoice) -> None:
        calls.append(choice.precision)
        time.sleep(bf16_seconds if choice.precision == "bf16" else fp32_seconds)

    return precision.StepProbe("a configuration", 8, step)


@pytest.mark.parametrize(("fp32_seconds", "bf16_seconds", "chosen"), [(0.002, 0.02, "float32"), (0.02, 0.002, "bf16")])
def test_auto_times_the_runs_own_step_even_on_native_units(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fp32_seconds: float, bf16_seconds: float, chosen: str
) -> None:
    """bf16 units do not make every step faster (BYOL ran slower in bf16 on AMX): the run's step decides."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    calls: list[str] = []
    probe = _sleeping_step(fp32_seconds, bf16_seconds, calls)
    choice = choose_precision("auto", CPU, cache_path=tmp_path / "p.json", step_probe=probe)
    assert choice.precision == chosen
    assert choice.reason.startswith("native bf16 (AMX)")
    assert "this configuration" in choice.reason
    assert calls.count("float32") == calls.count("bf16") == 3  # a warm-up and two timed steps each
    # Cached per machine and configuration: the same configuration is not timed again, another one is.
    assert choose_precision("auto", CPU, cache_path=tmp_path / "p.json", step_probe=probe) == choice
    assert len(calls) == 6
    other = precision.StepProbe("another configuration", 8, probe.step)
    choose_precision("auto", CPU, cache_path=tmp_path / "p.json", step_probe=other)
    assert len(calls) == 12


@pytest.mark.usefixtures("no_bf16_units")
def test_no_step_probe_where_the_machine_probe_says_float32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_probe(monkeypatch, fp32=738.0, bf16=334.0)
    calls: list[str] = []
    choice = choose_precision(
        "auto", CPU, cache_path=tmp_path / "p.json", step_probe=_sleeping_step(0.02, 0.001, calls)
    )
    assert choice.precision == "float32"
    assert calls == []


def test_a_trainers_step_probe_leaves_the_run_untouched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    monkeypatch.setenv("JAGA_PRECISION_CACHE", str(tmp_path / "p.json"))
    cfg = TrainConfig(
        method="byol",
        stem="small",
        image_size=16,
        batch_size=8,
        epochs=1,
        precision="auto",
        seed=3,
        checkpoint_every_steps=1_000_000,
    )
    images = np.random.default_rng(0).integers(0, 256, (16, 1, 16, 16), dtype=np.uint8)
    params = {"hidden_dim": 32, "projection_dim": 16}
    trainer = Trainer(build_method(cfg, params), images, cfg, CPU)
    assert "this configuration" in trainer.precision_choice.reason
    untouched = build_method(cfg, params)
    for (name, a), b in zip(trainer.method.state_dict().items(), untouched.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    fresh = torch.Generator().manual_seed(cfg.seed)
    assert torch.equal(trainer.generator.get_state(), fresh.get_state())
    assert all(p.grad is None for p in trainer.method.parameters())
