"""Registries fail loudly; configuration models refuse unknown keys and say which."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from ssl_core.backbones import BACKBONES, ResNetBackbone, build_backbone
from ssl_core.config import TrainConfig
from ssl_core.methods import METHODS
from ssl_core.methods.simclr import SimCLR, SimCLRParams
from ssl_core.registry import Registry, UnknownNameError
from ssl_core.train import build_method


def _registry() -> Registry[int]:
    reg: Registry[int] = Registry("widget")
    reg.register("beta")(2)
    reg.register("alpha")(1)
    return reg


def test_register_and_look_up() -> None:
    reg = _registry()
    assert reg.get("alpha") == 1 and reg.get("beta") == 2
    assert reg.names() == ["alpha", "beta"] and list(reg) == ["alpha", "beta"]
    assert "alpha" in reg and "gamma" not in reg


def test_register_returns_the_object_for_use_as_a_decorator() -> None:
    reg: Registry[type] = Registry("class")

    @reg.register("thing")
    class Thing:
        pass

    assert reg.get("thing") is Thing


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as error:
        _registry().get("gamma")
    assert str(error.value) == "unknown widget 'gamma'; valid: alpha, beta"
    assert isinstance(error.value, KeyError)


def test_duplicate_names_are_refused() -> None:
    reg = _registry()
    with pytest.raises(ValueError, match="widget 'alpha' is already registered"):
        reg.register("alpha")(3)
    assert reg.get("alpha") == 1


def test_project_registries_name_their_members() -> None:
    assert METHODS.get("simclr") is SimCLR
    assert BACKBONES.names() == ["resnet18", "resnet34", "resnet50", "vit_small", "vit_tiny"]
    with pytest.raises(UnknownNameError, match="unknown method 'nope'; valid: .*simclr"):
        METHODS.get("nope")
    with pytest.raises(UnknownNameError,
                       match="unknown backbone 'vit'; valid: resnet18, resnet34, resnet50, vit_small, vit_tiny"):
        build_backbone("vit")
    with pytest.raises(UnknownNameError, match="valid: .*simclr"):
        build_method(TrainConfig(method="nope"))


def test_simclr_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="already registered"):
        METHODS.register("simclr")(SimCLR)


@pytest.mark.parametrize("stem, size", [("standard", 16), ("small", 8)])
def test_backbone_features_shape(stem: str, size: int) -> None:
    backbone = build_backbone("resnet18", stem).eval()
    assert isinstance(backbone, ResNetBackbone) and backbone.dim == 512
    with torch.no_grad():
        assert backbone.features(torch.randn(2, 3, size, size)).shape == (2, 512)


@pytest.mark.parametrize("depth, stem, message", [(20, "small", "depth"), (18, "large", "stem")])
def test_backbone_refuses_bad_arguments(depth: int, stem: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResNetBackbone(depth, stem)  # type: ignore[arg-type]


def test_config_refuses_unknown_keys_and_two_budgets() -> None:
    with pytest.raises(ValidationError, match="learning_rat"):
        TrainConfig(learning_rat=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="either epochs or max_minutes"):
        TrainConfig(epochs=2, max_minutes=1.0)
    from ssl_core.config import DEFAULT_MAX_MINUTES

    default = TrainConfig()
    assert default.epochs is None and default.max_minutes == DEFAULT_MAX_MINUTES
    assert TrainConfig(epochs=3).max_minutes is None
    assert TrainConfig(max_minutes=5).epochs is None


def test_method_params_refuse_unknown_keys_and_out_of_range_values() -> None:
    with pytest.raises(ValidationError, match="temprature"):
        SimCLRParams(temprature=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="temperature"):
        SimCLRParams(temperature=0.0)
