"""Photographs given an intentional colour mood: scenes the light and tone stages must leave as they are.

The allowed photo sources hold few mood photographs (a sunset, a storm, a launch pad at dusk; all three are
held out), so most mood scenes are made here from allowed photographs by controlled, documented grades,
the way a photographer or a catalog's art director would make them:

* ``blue hour``: the cool, dim light after sunset: exposure down, blue up and red down in linear light,
  the highlights kept (windows, a lit sky);
* ``sunset``: warm light from low in the sky: highlights pushed orange, shadows left cooler (split toning),
  colours richer;
* ``fog``: a bright, slightly cool veil over the scene (airlight), lowering its contrast;
* ``monochrome``: black and white, and toned (sepia, cyanotype);
* ``backdrop``: a product (a crop of the photograph) on a seamless paper sweep of one colour with a soft
  shadow, the way catalog product shots are taken.

Each grade's strength is drawn from a seed, so the tuning photos and the held-out ones get different
grades of the same kinds.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from leapi_server.engine.color import linear_to_srgb, srgb_to_linear

MOODS = ("blue hour", "sunset", "fog", "monochrome", "toned", "backdrop")


def _linear(image: np.ndarray) -> np.ndarray:
    colour = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    return srgb_to_linear(colour / 255.0)


def _srgb(linear: np.ndarray) -> np.ndarray:
    return np.clip(np.round(linear_to_srgb(linear) * 255.0), 0, 255).astype(np.uint8)


def _luminance(linear: np.ndarray) -> np.ndarray:
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def blue_hour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    linear = _linear(image)
    dim = 2.0 ** -rng.uniform(0.6, 1.2)
    cool = np.array([rng.uniform(0.45, 0.6), rng.uniform(0.75, 0.85), rng.uniform(1.3, 1.6)])
    graded = linear * cool * dim
    # The brightest tones (lit windows, the sky's glow) stay bright: blue hour is dim, not under-exposed.
    keep = np.clip((_luminance(linear) - 0.45) / 0.4, 0.0, 1.0)[..., None]
    return _srgb(graded * (1 - keep) + linear * keep * np.array([0.9, 0.95, 1.1]))


def sunset(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    linear = _linear(image)
    luminance = _luminance(linear)[..., None]
    warm = np.array([rng.uniform(1.3, 1.6), 1.0, rng.uniform(0.45, 0.65)])
    shade = np.array([0.95, 0.97, rng.uniform(1.05, 1.2)])
    weight = np.clip(luminance / max(float(np.percentile(luminance, 90)), 1e-3), 0.0, 1.0)
    graded = linear * (warm * weight + shade * (1 - weight))
    graded = luminance + (graded - luminance) * rng.uniform(1.1, 1.3)  # richer colours
    return _srgb(np.clip(graded, 0.0, 1.0))


def fog(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    linear = _linear(image)
    height = linear.shape[0]
    # Thicker with distance, which in most photographs is higher in the frame.
    depth = np.linspace(1.0, rng.uniform(0.3, 0.6), height)[:, None, None]
    transmission = depth * rng.uniform(0.45, 0.7)
    airlight = np.array([0.78, 0.82, rng.uniform(0.86, 0.92)])
    return _srgb(linear * transmission + airlight * (1 - transmission))


def monochrome(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    del rng
    grey = _luminance(_linear(image))
    return _srgb(np.repeat(grey[..., None], 3, axis=2))


def toned(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sepia or cyanotype: one hue, strongest in the mid-tones, black and white kept."""
    grey = _luminance(_linear(image))[..., None]
    tint = (
        np.array([1.0, rng.uniform(0.78, 0.86), rng.uniform(0.55, 0.68)])
        if rng.random() < 0.6
        else np.array([rng.uniform(0.6, 0.7), rng.uniform(0.8, 0.88), 1.0])
    )
    strength = 4 * grey * (1 - grey)  # 0 at black and white, 1 in the middle
    return _srgb(grey * (1 - strength) + grey * tint / float(tint @ [0.2126, 0.7152, 0.0722]) * strength)


def backdrop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A product (a central crop of ``image``) on a seamless sweep of one colour, with a soft shadow."""
    colour = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    height, width = colour.shape[:2]
    hue = rng.uniform(0, 180)
    saturation = rng.uniform(70, 150)
    sweep = np.linspace(0.0, 1.0, height)[:, None]
    value = 235 - 50 * sweep**2 + rng.normal(0, 1.5, (height, width))
    hsv = np.stack([np.full((height, width), hue), np.full((height, width), saturation), value], axis=-1)
    paper = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float64)
    box_h, box_w = int(height * rng.uniform(0.5, 0.65)), int(width * rng.uniform(0.3, 0.5))
    top, left = (height - box_h) // 2, (width - box_w) // 2
    shadow: np.ndarray = np.zeros((height, width))
    shadow[top + box_h // 8 : top + box_h + box_h // 10, left + box_w // 10 : left + box_w + box_w // 8] = 1
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(2.0, box_w / 12))
    paper *= 1 - 0.35 * shadow[..., None]
    product = colour[
        (height - box_h) // 2 : (height + box_h) // 2, (width - box_w) // 2 : (width + box_w) // 2
    ]
    paper[top : top + product.shape[0], left : left + product.shape[1]] = product
    return np.clip(paper, 0, 255).astype(np.uint8)


GRADES: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "blue hour": blue_hour,
    "sunset": sunset,
    "fog": fog,
    "monochrome": monochrome,
    "toned": toned,
    "backdrop": backdrop,
}


def mood_scene(image: np.ndarray, mood: str, seed: int) -> np.ndarray:
    """``image`` (sRGB uint8) given ``mood``, its strength drawn from ``seed``."""
    return GRADES[mood](image, np.random.default_rng(seed))
