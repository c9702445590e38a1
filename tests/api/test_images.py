"""Fitting a decoded image to a model's stored size and channels, for uploads and requests alike."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from api.core.images import fit_image


def test_fit_image_centre_crops_after_covering() -> None:
    """A 20×10 (W×H) image fitted to 10×10 already covers it: the middle ten columns are kept."""
    pixels = np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    out = fit_image(Image.fromarray(pixels), 3, (10, 10))
    np.testing.assert_array_equal(out, pixels[:, 5:15].transpose(2, 0, 1))


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 1), ("L", 3), ("RGBA", 3), ("L", 1)])
@pytest.mark.parametrize("size", [(8, 8), (6, 11), (30, 20)])
def test_fit_image_shapes(mode: str, channels: int, size: tuple[int, int]) -> None:
    im = Image.new(mode, (13, 9))
    out = fit_image(im, channels, size)
    assert out.shape == (channels, *size)
    assert out.dtype == np.uint8
