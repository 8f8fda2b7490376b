"""Tone AI: contrast, shadows and highlights (``toneai_intensity``).

Works on the lightness L of CIELAB (colour is left alone):

1. a global shadows/highlights curve: lifts the shadows and holds back the highlights, by amounts that
   grow with how much of the image sits in each (measured on a thumbnail), so a bright product shot is
   not flattened and a dark interior is opened up;
2. CLAHE (contrast-limited adaptive histogram equalisation, OpenCV) for local contrast, with a tile
   grid sized to the image so tiles see comparable content at every resolution.

``intensity`` blends the result with the input lightness: 1.0 full, 0.0 disables the stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from leapi_server.engine.light import thumbnail

_LEVELS = np.arange(256, dtype=np.float64) / 255.0


@dataclass(frozen=True)
class ToneTuning:
    """Per-preset tuning of the tone stage (see ``presets.py``)."""

    shadows: float = 0.5  # maximum shadow lift (curve amplitude), reached when the image is mostly dark
    highlights: float = 0.3  # maximum highlight hold-back
    clahe_clip: float = 1.6  # OpenCV clip limit: higher = more local contrast (and more noise)
    clahe_tile_px: int = 160  # target tile side in output pixels


def shadows_highlights_curve(shadows: float, highlights: float) -> np.ndarray:
    """A 256-entry uint8 curve on L. Both terms vanish at 0 and 1, so black and white stay put.

    ``x + s * 27/4 x (1 - x)^2 * 0.15 - h * 27/4 x^2 (1 - x) * 0.15``: each bump peaks at 0.15 * amount
    (at 1/3 and 2/3 of the range); the curve stays monotonic for amounts up to 1.
    """
    x = _LEVELS
    bump = 27.0 / 4.0 * 0.15
    curve = x + shadows * bump * x * (1 - x) ** 2 - highlights * bump * x**2 * (1 - x)
    return np.clip(np.round(curve * 255.0), 0, 255).astype(np.uint8)


def measure_amounts(lightness: np.ndarray, tuning: ToneTuning) -> tuple[float, float]:
    """Shadow lift and highlight hold-back for this image, from the share of dark and bright pixels."""
    share_dark = float(np.mean(lightness < 80))  # L* below ~31
    share_bright = float(np.mean(lightness > 200))  # L* above ~78
    # Saturating: a third of the frame in shadow already earns the full lift.
    shadows = tuning.shadows * min(1.0, share_dark * 3.0)
    highlights = tuning.highlights * min(1.0, share_bright * 3.0)
    return shadows, highlights


def apply_tone(rgb: np.ndarray, *, intensity: float, tuning: ToneTuning) -> np.ndarray:
    """Adjust the tones of an ``HxWx3`` uint8 sRGB image."""
    if intensity <= 0.0:
        return rgb
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    lightness = lab[..., 0]
    shadows, highlights = measure_amounts(thumbnail(lightness), tuning)
    curved = cv2.LUT(lightness, shadows_highlights_curve(shadows, highlights))
    height, width = lightness.shape
    grid = (max(2, round(width / tuning.clahe_tile_px)), max(2, round(height / tuning.clahe_tile_px)))
    equalised = cv2.createCLAHE(clipLimit=tuning.clahe_clip, tileGridSize=grid).apply(curved)
    if intensity < 1.0:
        equalised = cv2.addWeighted(equalised, intensity, lightness, 1.0 - intensity, 0.0)
    lab[..., 0] = equalised
    return cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
