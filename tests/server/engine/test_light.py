from __future__ import annotations

import numpy as np
import pytest

from leapi_server.engine.color import linear_to_srgb, srgb_to_linear
from leapi_server.engine.light import LightTuning, apply_light, measure
from tests.server.engine.images import neutral_scene, scene

TUNING = LightTuning()


def _cast(image: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """Change the illuminant: multiply linear light per channel."""
    linear = srgb_to_linear(image / 255.0) * np.asarray(gains)
    return np.clip(np.round(linear_to_srgb(linear) * 255), 0, 255).astype(np.uint8)


def _expose(image: np.ndarray, factor: float) -> np.ndarray:
    return _cast(image, (factor, factor, factor))


def _cast_left(image: np.ndarray, neutral: np.ndarray) -> float:
    """How far the channel balance is from the white-lit original's (0 = same balance)."""
    ratios = srgb_to_linear(image / 255.0).reshape(-1, 3).mean(axis=0) / srgb_to_linear(
        neutral / 255.0
    ).reshape(-1, 3).mean(axis=0)
    return float(ratios.max() / ratios.min() - 1.0)


@pytest.mark.parametrize("illuminant", [(1.25, 1.0, 0.75), (0.8, 1.0, 1.25), (1.0, 1.2, 1.0)])
@pytest.mark.parametrize("seed", range(3))
def test_colour_cast_is_corrected(illuminant, seed):
    neutral = neutral_scene(seed=seed)
    cast = _cast(neutral, illuminant)
    corrected = apply_light(cast, intensity=1.0, tuning=TUNING)
    assert _cast_left(corrected, neutral) < 0.4 * _cast_left(cast, neutral)


def _key(image: np.ndarray) -> float:
    """Log-average luminance (linear light)."""
    luminance = srgb_to_linear(image / 255.0) @ np.array([0.2126, 0.7152, 0.0722])
    return float(np.exp(np.log(luminance + 1e-4).mean()))


@pytest.mark.parametrize("seed", range(3))
def test_under_exposure_is_brightened_without_clipping(seed):
    normal = neutral_scene(seed=seed)
    dark = _expose(normal, 0.25)  # two stops under
    corrected = apply_light(dark, intensity=1.0, tuning=TUNING)
    # At least 1.2 of the 2 missing stops come back (the rest is the dead zone around the target).
    assert _key(corrected) > _key(dark) * 2**1.2
    assert np.mean(corrected >= 254) <= np.mean(normal >= 254) + 0.01


def test_well_exposed_neutral_image_is_left_nearly_alone():
    scene_ = neutral_scene(seed=5).astype(float)
    low, high = np.percentile(scene_, [0.5, 99.5])
    image = np.clip((scene_ - low) / (high - low) * 255, 0, 255).astype(np.uint8)  # full tonal range
    corrected = apply_light(image, intensity=1.0, tuning=TUNING)
    assert np.abs(corrected.astype(int) - image).mean() < 4


def test_intensity_zero_disables_and_intensity_scales_the_effect():
    dark = _expose(neutral_scene(seed=6), 0.3)
    assert apply_light(dark, intensity=0.0, tuning=TUNING) is dark
    means = [apply_light(dark, intensity=t, tuning=TUNING).mean() for t in (0.1, 0.4, 0.7, 1.0)]
    assert means == sorted(means) and means[-1] > means[0] + 5


def test_white_balance_gains_are_clamped():
    # A frame that is almost all one colour is a red object, not a red illuminant.
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 200
    red[..., 1:] = 30
    correction = measure(red, TUNING)
    gains = np.asarray(correction.white_balance_gains)
    assert gains.max() / gains.min() <= TUNING.max_white_balance_gain**2 * 1.01


@pytest.mark.parametrize("seed", range(3))
def test_tables_are_monotonic(seed):
    correction = measure(_cast(scene(seed=seed), (1.2, 1.0, 0.8)), TUNING)
    tables = correction.tables().astype(int)
    assert np.all(np.diff(tables, axis=0) >= 0)
