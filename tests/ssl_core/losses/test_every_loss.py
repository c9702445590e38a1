"""What every loss shares: float32 arithmetic under bf16 autocast, and refused shapes and batch sizes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from ssl_core.losses import (
    BarlowTwinsLoss,
    DINOLoss,
    InfoNCELoss,
    MemoryBank,
    NegativeCosineSimilarity,
    NTXentLoss,
    SwAVLoss,
    VICRegLoss,
)

LOSSES = [
    pytest.param(lambda: NegativeCosineSimilarity("simsiam"), id="simsiam"),
    pytest.param(lambda: NegativeCosineSimilarity("byol"), id="byol"),
    pytest.param(lambda: BarlowTwinsLoss(5e-3), id="barlow_twins"),
    pytest.param(lambda: VICRegLoss(), id="vicreg"),
    pytest.param(lambda: NTXentLoss(), id="ntxent"),
]


@pytest.mark.parametrize("make_loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pair_losses_compute_in_float32_under_bf16_autocast(
    make_loss: Callable[[], nn.Module], dtype: torch.dtype
) -> None:
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(64, 128, generator=g)
    z1 = z0 + 0.5 * torch.randn(64, 128, generator=g)
    loss = make_loss()
    x0, x1 = z0.to(dtype), z1.to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(x0, x1)
    assert mixed.dtype == torch.float32
    # Same result as float32 on the same (possibly bf16-rounded) values ...
    torch.testing.assert_close(mixed, loss(x0.float(), x1.float()), rtol=1e-5, atol=1e-5)
    # ... and close to float32 on the unrounded values: only the inputs' rounding differs.
    torch.testing.assert_close(mixed, loss(z0, z1), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("make_loss", LOSSES)
@pytest.mark.parametrize(
    ("shape0", "shape1"),
    [
        ((4, 8), (4, 9)),  # dimensions differ
        ((4, 8), (5, 8)),  # batch sizes differ
        ((4, 8, 2), (4, 8, 2)),  # not 2-D
        ((8,), (8,)),  # not 2-D
    ],
)
def test_pair_losses_refuse_inputs_of_unequal_or_non_2d_shape(
    make_loss: Callable[[], nn.Module], shape0: tuple[int, ...], shape1: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match="equal shape"):
        make_loss()(torch.randn(shape0), torch.randn(shape1))


@pytest.mark.parametrize(
    ("make_loss", "b", "message"),
    [
        pytest.param(lambda: NegativeCosineSimilarity(), 0, "at least 1 pair", id="negative_cosine"),
        pytest.param(lambda: BarlowTwinsLoss(), 1, "at least 2 samples", id="barlow_twins"),
        pytest.param(lambda: VICRegLoss(), 1, "at least 2 samples", id="vicreg"),
        pytest.param(lambda: NTXentLoss(), 1, "at least 2 pairs", id="ntxent"),
    ],
)
def test_pair_losses_refuse_too_small_batches(make_loss: Callable[[], nn.Module], b: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_loss()(torch.randn(b, 8), torch.randn(b, 8))


def _bf16_cases() -> list[tuple[str, Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    q, k, queue = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g), torch.randn(64, 32, generator=g)
    features, indices = torch.randn(16, 32, generator=g), torch.randperm(100, generator=g)[:16]
    prototypes = torch.nn.functional.normalize(torch.randn(20, 32, generator=g), dim=1)
    crops = [torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=1) @ prototypes.T for _ in range(4)]
    student, teacher = (
        [torch.randn(16, 20, generator=g) for _ in range(4)],
        [torch.randn(16, 20, generator=g) for _ in range(2)],
    )
    bank = MemoryBank(100, 32, generator=torch.Generator().manual_seed(1))
    dino = DINOLoss(20).eval()
    return [
        ("info_nce", lambda cast: InfoNCELoss(0.2)(cast(q), cast(k), cast(queue))),
        ("memory_bank", lambda cast: bank(cast(features), indices)),
        ("swav", lambda cast: SwAVLoss()([cast(c) for c in crops], n_global=2)),
        ("dino", lambda cast: dino([cast(s) for s in student], [cast(t) for t in teacher])),
    ]


@pytest.mark.parametrize("case", range(4), ids=["info_nce", "memory_bank", "swav", "dino"])
def test_queue_and_crop_losses_compute_in_float32_under_bf16_autocast(case: int) -> None:
    _, compute = _bf16_cases()[case]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = compute(lambda x: x.bfloat16())
    assert mixed.dtype == torch.float32
    # Exactly the float32 loss of the bf16-rounded inputs, and close to that of the original inputs.
    torch.testing.assert_close(mixed, compute(lambda x: x.bfloat16().float()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, compute(lambda x: x), rtol=2e-2, atol=1e-3)
