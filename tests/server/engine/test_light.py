from __future__ import annotations

import numpy as np
import pytest
from skimage.color import deltaE_cie76, rgb2lab

from devkit.moods import mood_scene
from leapi_server.engine.color import linear_to_srgb, srgb_to_linear
from leapi_server.engine.light import LightTuning, apply_light, measure, thumbnail
from tests.server.engine.images import neutral_scene
from train.photos import TRAIN_PHOTOS, load_photo

#: Pure image functions: no server, so once, not once per server backend.
pytestmark = pytest.mark.own_backends

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


def _delta_e(a: np.ndarray, b: np.ndarray) -> float:
    return float(deltaE_cie76(rgb2lab(a), rgb2lab(b)).mean())


def _well_exposed(seed: int) -> np.ndarray:
    """A neutral scene spread over the full tonal range (highlights near white)."""
    scene_ = neutral_scene(seed=seed).astype(float)
    low, high = np.percentile(scene_, [0.5, 99.5])
    return np.clip((scene_ - low) / (high - low) * 255, 0, 255).astype(np.uint8)


def _night(seed: int) -> np.ndarray:
    """A night scene: most of the frame near black, a few bright lamps."""
    image = (neutral_scene(seed=seed).astype(float) * 0.12).astype(np.uint8)
    for x in (20, 70, 120):
        image[10:16, x : x + 6] = 250
    return image


def _photo(name: str) -> np.ndarray:
    """A photograph from the training set (never a held-out one), reduced to thumbnail size."""
    assert name in TRAIN_PHOTOS
    return thumbnail(load_photo(name))


@pytest.mark.parametrize("illuminant", [(1.25, 1.0, 0.75), (1.15, 1.0, 0.85)])
def test_a_warm_cast_is_corrected(illuminant):
    photo = _photo("skimage:motorcycle_left.png")
    cast = _cast(photo, illuminant)
    corrected = apply_light(cast, intensity=1.0, tuning=TUNING)
    assert _cast_left(corrected, photo) < 0.6 * _cast_left(cast, photo)


@pytest.mark.parametrize("illuminant", [(1.25, 1.0, 0.75), (0.8, 1.0, 1.25), (1.15, 1.0, 0.85)])
@pytest.mark.parametrize("name", ["skimage:motorcycle_left.png", "skimage:ihc.png", "skimage:retina.jpg"])
def test_a_cast_is_never_made_worse(illuminant, name):
    # The estimate is gated (a scene's own colours pull it too), so some casts are only partly
    # corrected or left alone; none may be pushed further or over to the other side.
    photo = _photo(name)
    cast = _cast(photo, illuminant)
    corrected = apply_light(cast, intensity=1.0, tuning=TUNING)
    assert _cast_left(corrected, photo) <= _cast_left(cast, photo) + 0.01


@pytest.mark.parametrize("seed", range(3))
def test_a_green_tint_is_not_taken_for_the_light(seed):
    # Off the warm-cool axis no real light source lies: a green tint is the scene's (foliage), kept.
    green = _cast(_well_exposed(seed), (1.0, 1.25, 1.0))
    assert apply_light(green, intensity=1.0, tuning=TUNING) is green


def test_a_frame_of_one_strong_colour_is_left_alone():
    # A red product filling the frame: a red object, not a red light.
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 200
    red[..., 1:] = 30
    correction = measure(red, TUNING)
    assert correction.white_balance_gains == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("seed", range(3))
def test_under_exposure_is_brightened_without_clipping(seed):
    normal = _well_exposed(seed)
    dark = _expose(normal, 0.5)  # one stop under
    corrected = apply_light(dark, intensity=1.0, tuning=TUNING)
    # Most of the missing stop comes back...
    assert _delta_e(corrected, normal) < 0.4 * _delta_e(dark, normal)
    # ...and nothing is clipped that the original had not clipped.
    assert np.mean(corrected == 255) <= np.mean(normal == 255)


@pytest.mark.parametrize("seed", range(3))
def test_well_exposed_image_is_left_alone(seed):
    image = _well_exposed(seed)
    corrected = apply_light(image, intensity=1.0, tuning=TUNING)
    assert _delta_e(corrected, image) < 1.0


@pytest.mark.parametrize("seed", range(3))
def test_night_scene_stays_dark(seed):
    night = _night(seed)
    corrected = apply_light(night, intensity=1.0, tuning=TUNING)
    assert corrected.mean() <= night.mean() * 1.15


def test_intensity_zero_disables_and_intensity_scales_the_effect():
    dark = _expose(_well_exposed(6), 0.4)
    assert apply_light(dark, intensity=0.0, tuning=TUNING) is dark
    means = [apply_light(dark, intensity=t, tuning=TUNING).mean() for t in (0.1, 0.4, 0.7, 1.0)]
    assert means == sorted(means) and means[-1] > means[0] + 5


def test_tables_are_monotonic():
    correction = measure(_expose(_cast(_photo("skimage:motorcycle_left.png"), (1.2, 1.0, 0.8)), 0.4), TUNING)
    assert correction.exposure_ev > 0 and correction.white_balance_gains != (1.0, 1.0, 1.0)
    tables = correction.tables().astype(int)
    assert np.all(np.diff(tables, axis=0) >= 0)
    assert np.all(tables[255] == 255) and np.all(tables[0] == 0)
    assert np.all(tables[:255] < 255)  # nothing but white becomes white


# --------------------------------------------------------------------------------------------------
# Do no harm at the tails (issue 23): moods are kept, photos without highlights are not brightened
# --------------------------------------------------------------------------------------------------


def test_a_cool_cast_is_kept_it_is_blue_hour_or_shade_not_a_mistake():
    photo = _photo("skimage:motorcycle_left.png")
    cool = _cast(photo, (0.8, 1.0, 1.25))
    assert measure(thumbnail(cool), TUNING).white_balance_gains == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("seed", range(3))
def test_a_blue_hour_scene_is_neither_warmed_nor_brightened(seed):
    scene = mood_scene(_photo("skimage:motorcycle_left.png"), "blue hour", seed)
    correction = measure(thumbnail(scene), TUNING)
    assert correction.white_balance_gains == (1.0, 1.0, 1.0)
    assert correction.exposure_ev == 0.0


@pytest.mark.parametrize(
    "name", ["skimage:motorcycle_left.png", "lomiri-wallpapers-16.04:picosdeeuropa_by_Aitzol_Berasategi.jpg"]
)
def test_a_black_and_white_photo_is_left_alone(name):
    mono = mood_scene(_photo(name), "monochrome", 0)
    assert _delta_e(apply_light(mono, intensity=1.0, tuning=TUNING), mono) < 1.0


@pytest.mark.parametrize("name", ["skimage:brick.png", "skimage:grass.png", "skimage:gravel.png"])
def test_a_texture_without_highlights_is_not_brightened(name):
    """No whites, but not dark overall: a texture is not under-exposed."""
    texture = _colour(_photo(name))
    assert _delta_e(apply_light(texture, intensity=1.0, tuning=TUNING), texture) < 6.0


#: A faint warm tint, as a photograph of paper or stones under a lamp shows (a photograph, not a greyscale scan).
_LAMP = (1.04, 1.0, 0.94)


def test_grey_paper_is_brightened_a_grey_texture_of_the_same_key_is_not():
    """The brightest tones of a page are one smooth area: grey paper is white paper under-exposed. Those of
    gravel are specks in a texture: no evidence. Both have the same key once the page is one stop under."""
    page = _expose(_cast(_colour(_photo("skimage:page.png")), _LAMP), 0.5)
    gravel = _cast(_colour(_photo("skimage:gravel.png")), _LAMP)
    assert measure(thumbnail(page), TUNING).exposure_ev > 0.6
    assert measure(thumbnail(gravel), TUNING).exposure_ev < 0.1


def test_smooth_but_coloured_brightest_tones_are_no_evidence_of_whites():
    """An orange cat's light fur is as smooth as paper, but it is fur: only neutral smooth whites raise the
    key brightening may reach. The same page, one stop under, printed orange, is not brightened past it."""
    orange_page = _expose(_cast(_colour(_photo("skimage:page.png")), (1.9, 1.0, 0.45)), 0.5)
    assert measure(thumbnail(orange_page), TUNING).exposure_ev < 0.1


def test_a_greyscale_image_is_left_to_tone_even_when_dim():
    """Black and white is a rendering, not a camera's mistake: no colour to balance, no exposure to repair
    (the same page with a lamp's faint tint is brightened, above)."""
    page = _expose(_colour(_photo("skimage:page.png")), 0.5)
    assert measure(thumbnail(page), TUNING).is_identity


def test_coloured_highlights_are_weaker_evidence_than_grey_ones():
    """A green leaf at its brightest sits well below white when exposed right; a grey card does not."""
    grey = _expose(_well_exposed(1), 0.5)
    green = _cast(grey, (0.4, 1.0, 0.3))
    assert 0 < measure(green, TUNING).exposure_ev < 0.8 * measure(grey, TUNING).exposure_ev


def _colour(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
