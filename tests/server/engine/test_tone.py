from __future__ import annotations

import cv2
import numpy as np
import pytest

from devkit.moods import mood_scene
from leapi_server.engine.tone import ToneTuning, apply_tone, contrast_curve, read, shadows_highlights_curve
from tests.server.engine.images import scene
from train.photos import load_photo

#: Pure image functions: no server, so once, not once per server backend.
pytestmark = pytest.mark.own_backends

TUNING = ToneTuning()


def _lightness(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)[..., 0].astype(float)


def _dark_interior() -> np.ndarray:
    image = scene(160, 120, seed=7).astype(np.float32)
    image[:, :100] *= 0.45  # most of the frame in shadow, a bright window on the right
    return np.clip(image, 0, 255).astype(np.uint8)


def _night() -> np.ndarray:
    """Most of the frame near black, a few lamps."""
    image = (scene(160, 120, seed=3).astype(np.float32) * 0.15).astype(np.uint8)
    for x in (20, 70, 120):
        image[10:16, x : x + 6] = 250
    return image


def _flat() -> np.ndarray:
    """A hazy, low-contrast photo: tones squeezed into the middle of the range."""
    return (90 + scene(160, 120, seed=5).astype(np.float32) * 0.3).astype(np.uint8)


def _normal() -> np.ndarray:
    """Normal contrast: the scene spread over the full range."""
    image = scene(160, 120, seed=5).astype(np.float32)
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / (high - low) * 255, 0, 255).astype(np.uint8)


def test_a_flat_photo_gets_contrast_and_a_normal_one_is_barely_touched():
    flat, normal = _flat(), _normal()
    assert read(_lightness(flat).astype(np.uint8), TUNING).flatness > 0.9
    assert read(_lightness(normal).astype(np.uint8), TUNING).flatness < 0.5
    assert _lightness(apply_tone(flat, intensity=1.0, tuning=TUNING)).std() > 1.5 * _lightness(flat).std()
    change = np.abs(_lightness(apply_tone(normal, intensity=0.5, tuning=TUNING)) - _lightness(normal)).mean()
    assert change < 4.0


def test_a_night_scene_stays_dark():
    night = _night()
    toned = apply_tone(night, intensity=1.0, tuning=TUNING)
    assert read(_lightness(night).astype(np.uint8), TUNING).low_key == 1.0
    assert toned.mean() <= night.mean() * 1.15


def test_no_highlight_is_clipped_that_was_not():
    for image in (_dark_interior(), _flat(), _normal(), _night(), _saturated()):
        toned = apply_tone(image, intensity=1.0, tuning=TUNING)
        # Per channel: a saturated colour brightened at constant chroma leaves the gamut first.
        assert not np.any((toned == 255) & (image < 255))


def _saturated() -> np.ndarray:
    """Bright saturated colours next to shadows: toning lifts them towards the edge of the gamut."""
    image = scene(160, 120, seed=9).astype(np.float32)
    image[:60] = [250, 200, 40]
    image[60:80] *= 0.3
    return np.clip(image, 0, 255).astype(np.uint8)


def test_shadows_are_lifted():
    image = _dark_interior()
    toned = apply_tone(image, intensity=1.0, tuning=TUNING)
    before, after = _lightness(image), _lightness(toned)
    shadows = before < np.percentile(before, 40)
    assert after[shadows].mean() > before[shadows].mean() + 5


def test_local_contrast_increases_in_flat_regions():
    image = _dark_interior()
    toned = apply_tone(image, intensity=1.0, tuning=TUNING)
    region = (slice(10, 110), slice(10, 90))
    assert _lightness(toned)[region].std() > _lightness(image)[region].std()


def test_intensity_zero_disables_and_intensity_is_monotonic():
    image = _dark_interior()
    assert apply_tone(image, intensity=0.0, tuning=TUNING) is image
    lifts = [_lightness(apply_tone(image, intensity=t, tuning=TUNING)).mean() for t in (0.2, 0.5, 1.0)]
    assert lifts == sorted(lifts)


def test_colour_is_left_alone():
    image = _dark_interior()
    toned = apply_tone(image, intensity=1.0, tuning=TUNING)
    lab_before = cv2.cvtColor(image, cv2.COLOR_RGB2Lab)[..., 1:].astype(int)
    lab_after = cv2.cvtColor(toned, cv2.COLOR_RGB2Lab)[..., 1:].astype(int)
    assert np.abs(lab_after - lab_before).mean() < 2.5


def test_curve_keeps_black_and_white_and_is_monotonic():
    for shadows, highlights in [(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.3)]:
        curve = shadows_highlights_curve(shadows, highlights).astype(int)
        assert curve[0] == 0 and curve[255] == 255
        assert np.all(np.diff(curve) >= 0)
    assert shadows_highlights_curve(1, 0)[64] > 64  # lifts a shadow tone
    assert shadows_highlights_curve(0, 1)[192] < 192  # holds back a highlight


def test_fog_keeps_its_softness():
    """A bright, flat scene is high-key on purpose (fog, snow): not stretched, no local contrast."""
    photo = load_photo("skimage:motorcycle_left.png")
    for seed in range(3):
        foggy = mood_scene(photo, "fog", seed)
        reading = read(_lightness(foggy).astype(np.uint8), TUNING)
        assert reading.high_key == 1.0 and reading.flatness == 0.0
        toned = apply_tone(foggy, intensity=1.0, tuning=TUNING)
        assert np.abs(_lightness(toned) - _lightness(foggy)).mean() < 3.0


def test_a_flat_photo_is_spread_by_at_most_max_stretch():
    curve = contrast_curve(black=100.0, white=150.0, flatness=1.0, max_stretch=TUNING.max_stretch) * 255
    assert curve[100] == pytest.approx(100 - TUNING.max_stretch)
    assert curve[150] == pytest.approx(150 + TUNING.max_stretch)
    assert curve[0] == 0 and curve[255] == 255
