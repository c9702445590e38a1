"""SimSiam: the stop-gradient on the target branch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.ssl_core.methods.helpers import resnet_method

pytestmark = pytest.mark.usefixtures("fp32_training")


def _gradients(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    method.zero_grad(set_to_none=True)
    return grads


def _by_hand(method, images: torch.Tensor, seed: int, stop_gradient: bool) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The paper's loss, D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2, on the views the method's step draws."""
    b = images.shape[0]
    z = method.projector(method.backbone.features(torch.cat(method.views(images, torch.Generator().manual_seed(seed)))))
    p = method.predictor(z)
    target = z.detach() if stop_gradient else z

    def d(p_: torch.Tensor, z_: torch.Tensor) -> torch.Tensor:
        return -(F.normalize(p_, dim=1) * F.normalize(z_, dim=1)).sum(dim=1).mean()

    return (d(p[:b], target[b:]) + d(p[b:], target[:b])) / 2


def test_simsiam_training_step_sends_no_gradient_through_the_target_branch() -> None:
    """SimSiam.training_step's gradients are those of the loss with the targets detached, so the projector
    (and backbone) learn only through the predictor's input; without the stop-gradient they would differ."""
    torch.manual_seed(0)
    method = resnet_method("simsiam", projection_dim=64, predictor_hidden_dim=16)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    method.training_step(images, torch.arange(4), torch.Generator().manual_seed(2)).loss.backward()
    step = _gradients(method)
    _by_hand(method, images, 2, stop_gradient=True).backward()
    detached = _gradients(method)
    _by_hand(method, images, 2, stop_gradient=False).backward()
    through_target = _gradients(method)
    assert step.keys() == detached.keys()
    assert any(k.startswith("projector.") for k in step)
    for name, grad in step.items():
        torch.testing.assert_close(grad, detached[name], rtol=1e-4, atol=1e-6, msg=name)
    projector = [n for n in step if n.startswith("projector.")]
    assert any(not torch.allclose(step[n], through_target[n], rtol=1e-3, atol=1e-6) for n in projector)
