"""Rotation prediction: the quarter-turn batch and its labels."""

from __future__ import annotations

import pytest
import torch

from ssl_core.methods.rotation import rotate_batch

pytestmark = pytest.mark.usefixtures("fp32_training")


def test_rotation_labels_name_the_quarter_turns() -> None:
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)  # asymmetric images
    views, labels = rotate_batch(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):
        torch.testing.assert_close(views[2 * k : 2 * k + 2], torch.rot90(x, k, dims=(2, 3)))
    # a quarter turn counter-clockwise moves the top-right corner to the top-left
    assert views[2, 0, 0, 0] == x[0, 0, 0, 2]
