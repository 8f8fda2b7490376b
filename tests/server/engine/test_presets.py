from __future__ import annotations

import cv2
import numpy as np
import pytest

from leapi.models import (
    OPERATION_ADAPTER,
    ImageFormat,
    MarketplacePreset,
    PrintPreset,
    RealEstatePreset,
)
from leapi_server.engine import enhance
from leapi_server.engine.presets import PRESETS, recipe_for
from tests.server.engine.images import encode, neutral_scene, pixels

#: Pure image functions: no server, so once, not once per server backend.
pytestmark = pytest.mark.own_backends


def _lightness(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)[..., 0].astype(float)


def _dark_interior() -> np.ndarray:
    image = neutral_scene(seed=11).astype(np.float32)
    image[:, :110] *= 0.3
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("op", sorted(PRESETS))
def test_every_preset_runs_with_only_its_op(op):
    operation = OPERATION_ADAPTER.validate_python({"op": op})
    result = enhance(encode(neutral_scene(), "JPEG", quality=60), operation)
    assert (result.output.width, result.output.height) == (160, 120)
    recipe = recipe_for(operation)
    preset = PRESETS[op]
    assert recipe.restoration_level == preset.restoration_level
    assert recipe.quality == preset.quality
    assert recipe.image_format is ImageFormat.JPEG


def test_request_fields_override_preset_defaults():
    recipe = recipe_for(
        RealEstatePreset(restoration_level=9, lightai_intensity=0.2, tone_intensity=0.0, quality=60)
    )
    assert (recipe.restoration_level, recipe.lightai_intensity, recipe.toneai_intensity, recipe.quality) == (
        9,
        0.2,
        0.0,
        60,
    )


def test_realestate_lifts_shadows_more_than_marketplace():
    data = encode(_dark_interior(), "PNG")
    common = {"lightai_intensity": 1.0, "toneai_intensity": 1.0, "image_format": "PNG"}
    market = _lightness(pixels(enhance(data, MarketplacePreset(**common)).data))
    estate = _lightness(pixels(enhance(data, RealEstatePreset(**common)).data))
    before = _lightness(_dark_interior())
    shadows = before < np.percentile(before, 40)
    assert estate[shadows].mean() > market[shadows].mean() > before[shadows].mean()


def test_print_is_sharper_than_marketplace():
    data = encode(neutral_scene(), "JPEG", quality=90)
    common = {
        "restoration_level": 3,
        "lightai_intensity": 0.0,
        "toneai_intensity": 0.0,
        "image_format": "PNG",
    }

    def edge_energy(op) -> float:
        grey = cv2.cvtColor(pixels(enhance(data, op).data), cv2.COLOR_RGB2GRAY).astype(np.float32)
        return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())

    assert edge_energy(PrintPreset(**common)) > 1.05 * edge_energy(MarketplacePreset(**common))


@pytest.mark.parametrize("background", [245, 250, 255])
@pytest.mark.parametrize("colour", [(40, 90, 160), (200, 40, 30)])
def test_marketplace_keeps_a_white_background_clean(background, colour):
    product = np.full((120, 160, 3), background, np.uint8)
    cv2.circle(product, (80, 60), 35, colour, -1)
    out = pixels(
        enhance(encode(product, "PNG"), MarketplacePreset(lightai_intensity=1.0, image_format="PNG")).data
    )
    corner = out[5:20, 5:20].reshape(-1, 3).astype(int)
    assert corner.mean() >= background - 1  # not darkened
    assert (corner.max(axis=1) - corner.min(axis=1)).max() <= 3  # and not tinted by the product's colour
