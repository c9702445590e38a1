"""LARS against a reference, and build_optimizer's parameter groups and options."""

from __future__ import annotations

import pytest
import torch

from ssl_core.optim import LARS, build_optimizer


def lars_reference(
    w: torch.Tensor,
    grads: list[torch.Tensor],
    lr: float,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
) -> torch.Tensor:
    """LARS as its docstring states it: u = g + wd·w, scaled by η·‖w‖ / ‖u‖ (1 if a norm is 0),
    then SGD with momentum: v ← m·v + d (v = d at the first step), w ← w - lr·v."""
    w = w.clone()
    velocity = None
    for g in grads:
        u = g + weight_decay * w
        w_norm, u_norm = w.norm().item(), u.norm().item()
        trust = trust_coefficient * w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        d = u * trust
        velocity = d if velocity is None else momentum * velocity + d
        w = w - lr * velocity
    return w


def _run_lars(w0: torch.Tensor, grads: list[torch.Tensor], **kwargs: float) -> torch.Tensor:
    p = torch.nn.Parameter(w0.clone())
    opt = LARS([p], **kwargs)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def _lars_case(seed: int = 0, shape: tuple[int, ...] = (4, 3)) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64), [
        torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3)
    ]


@pytest.mark.parametrize("trust_coefficient", [0.001, 0.02, 1.0])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("shape", [(4, 3), (5,)])
def test_lars_matches_reference_without_weight_decay(
    shape: tuple[int, ...], momentum: float, trust_coefficient: float
) -> None:
    w0, grads = _lars_case(shape=shape)
    kwargs = dict(lr=0.5, momentum=momentum, weight_decay=0.0, trust_coefficient=trust_coefficient)
    torch.testing.assert_close(_run_lars(w0, grads, **kwargs), lars_reference(w0, grads, **kwargs))


@pytest.mark.parametrize("weight_decay", [0.5])
def test_lars_matches_reference_with_weight_decay(weight_decay: float) -> None:
    w0, grads = _lars_case()
    kwargs = dict(lr=0.5, momentum=0.9, weight_decay=weight_decay, trust_coefficient=0.02)
    torch.testing.assert_close(_run_lars(w0, grads, **kwargs), lars_reference(w0, grads, **kwargs))


def test_lars_zero_weights_get_a_plain_momentum_step() -> None:
    _, grads = _lars_case()
    w0 = torch.zeros(4, 3, dtype=torch.float64)
    got = _run_lars(w0, grads, lr=0.5, momentum=0.9, weight_decay=0.0)
    torch.testing.assert_close(
        got, lars_reference(w0, grads, lr=0.5, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001)
    )


def test_lars_excluded_group_is_plain_sgd_with_momentum() -> None:
    w0, grads = _lars_case(shape=(6,))
    p, q = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    lars = LARS([{"params": [p], "lars_exclude": True, "weight_decay": 0.0}], lr=0.5, weight_decay=0.1)
    sgd = torch.optim.SGD([q], lr=0.5, momentum=0.9)
    for g in grads:
        p.grad, q.grad = g.clone(), g.clone()
        lars.step()
        sgd.step()
    torch.testing.assert_close(p.detach(), q.detach())


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
def test_build_optimizer_exempts_biases_and_norms_from_weight_decay(name: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = build_optimizer(name, model, lr=0.1, weight_decay=0.01)
    decay, no_decay = opt.param_groups
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 4
    assert no_decay["weight_decay"] == 0.0
    assert decay["weight_decay"] == 0.01
    if name == "lars":
        assert no_decay["lars_exclude"]
        assert not decay["lars_exclude"]


def test_build_optimizer_scales_the_no_decay_lr_and_sets_adamw_betas() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    opt = build_optimizer("adamw", model, lr=0.1, weight_decay=0.01, betas=(0.9, 0.95), no_decay_lr_scale=0.25)
    decay, no_decay = opt.param_groups
    assert decay["betas"] == no_decay["betas"] == (0.9, 0.95)
    assert (decay["lr_scale"], no_decay["lr_scale"]) == (1.0, 0.25)
    assert (decay["base_weight_decay"], no_decay["base_weight_decay"]) == (0.01, 0.0)


def test_build_optimizer_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="valid: adamw, lars, sgd"):
        build_optimizer("adam", torch.nn.Linear(2, 2), lr=0.1, weight_decay=0.0)
