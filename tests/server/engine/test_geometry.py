from __future__ import annotations

import numpy as np
import pytest

from leapi_server.engine import fit_box
from leapi_server.engine.geometry import resize

#: Pure image functions: no server, so once, not once per server backend.
pytestmark = pytest.mark.own_backends


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [
        ((900, 600), (1800, 1200), (1800, 1200)),  # exact aspect: both sides equal the box
        ((900, 600), (1600, 900), (1350, 900)),  # height binds
        ((900, 600), (1200, 1600), (1200, 800)),  # width binds
        ((900, 600), (None, 300), (450, 300)),  # only height given
        ((900, 600), (450, None), (450, 300)),  # only width given
        ((900, 600), (None, None), (900, 600)),  # nothing given: input size kept
        ((1000, 1), (10, 10), (10, 1)),  # extreme aspect never collapses to zero
        ((3, 2000), (100, 100), (1, 100)),
        ((450, 600), (1200, 1600), (1200, 1600)),  # upscale, docs' marketplace sample
    ],
)
def test_fit_box(size, box, expected):
    assert fit_box(*size, *box) == expected


@pytest.mark.parametrize("width", [1, 7, 640, 1001])
@pytest.mark.parametrize("box", [(500, 500), (37, 2000), (2000, 37)])
def test_fit_box_fits_inside_with_one_side_equal(width, box):
    out = fit_box(width, 480, *box)
    assert out[0] <= box[0] and out[1] <= box[1]
    assert out[0] == box[0] or out[1] == box[1]
    # Aspect kept to within rounding of one pixel.
    assert abs(out[0] * 480 - out[1] * width) <= max(width, 480)


def test_fit_box_rejects_non_positive():
    with pytest.raises(ValueError):
        fit_box(0, 10, 5, 5)
    with pytest.raises(ValueError):
        fit_box(10, 10, 0, 5)


def test_equal_size_is_not_resampled():
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert resize(image, (30, 20)) is image


def test_downscale_is_antialiased():
    # One-pixel stripes: a filter without antialiasing turns them into strong moire or leaves stripes.
    stripes = np.zeros((120, 120), dtype=np.uint8)
    stripes[:, ::2] = 255
    small = resize(stripes, (37, 37))
    assert abs(float(small.mean()) - 127.5) < 4
    assert float(small.std()) < 6


def test_rgba_downscale_does_not_bleed_transparent_colour():
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # transparent area is pure red underneath
    rgba[:, 32:, :3] = (0, 0, 255)
    rgba[:, 32:, 3] = 255
    out = resize(rgba, (16, 16))
    visible = out[..., 3] > 0
    assert out[visible][:, 0].max() < 8  # no red fringe on the opaque blue


def test_resize_keeps_channel_layout():
    assert resize(np.zeros((10, 10), np.uint8), (20, 20)).shape == (20, 20)
    assert resize(np.zeros((10, 10, 2), np.uint8), (20, 20)).shape == (20, 20, 2)
    assert resize(np.zeros((10, 10, 2), np.uint8), (5, 5)).shape == (5, 5, 2)
