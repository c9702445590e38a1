"""Registries fail loudly and name their members."""

from __future__ import annotations

import pytest

from ssl_core.backbones import BACKBONES, build_backbone
from ssl_core.config import TrainConfig
from ssl_core.methods import METHODS
from ssl_core.methods.simclr import SimCLR
from ssl_core.registry import Registry, UnknownNameError
from ssl_core.train import build_method


def _registry() -> Registry[int]:
    reg: Registry[int] = Registry("widget")
    reg.register("beta")(2)
    reg.register("alpha")(1)
    return reg


def test_register_and_look_up() -> None:
    reg = _registry()
    assert reg.get("alpha") == 1
    assert reg.get("beta") == 2
    assert reg.names() == ["alpha", "beta"]
    assert list(reg) == ["alpha", "beta"]
    assert "alpha" in reg
    assert "gamma" not in reg


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
    assert BACKBONES.names() == [
        "efficientnet_b0",
        "mobilenet_v3_large",
        "mobilenet_v3_small",
        "resnet18",
        "resnet34",
        "resnet50",
        "vit_small",
        "vit_tiny",
    ]
    with pytest.raises(UnknownNameError, match=r"unknown method 'nope'; valid: .*simclr"):
        METHODS.get("nope")
    with pytest.raises(
        UnknownNameError, match=r"unknown backbone 'vit'; valid: efficientnet_b0, .*, vit_small, vit_tiny"
    ):
        build_backbone("vit")
    with pytest.raises(UnknownNameError, match=r"valid: .*simclr"):
        build_method(TrainConfig(method="nope"))


def test_simclr_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="already registered"):
        METHODS.register("simclr")(SimCLR)
