"""Light AI: colour and brightness correction (``lightai_intensity``).

Three global corrections, estimated on a thumbnail and applied to the full image as one lookup table
per channel (so the cost at full resolution is one table lookup per pixel):

1. white balance: shades-of-grey (Finlayson & Trezzi 2004; Minkowski norm ``p``) in linear light,
   with per-channel gains clamped so a scene dominated by one colour is not "corrected" into its
   complement, applied as curves that keep white at white (a blown-out background stays clean);
2. exposure: the geometric mean luminance (mean log-luminance, Reinhard's "key") is moved towards a
   target key by a curve that fixes black and white (no clipping), outside a dead zone around the
   target so well-exposed photos are left alone;
3. a percentile stretch of luminance (black and white points), limited so it never clips much.

``intensity`` scales every parameter towards identity (gains and exposure geometrically, points
linearly): 1.0 is the full correction, 0.0 disables the stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from leapi_server.engine.color import linear_to_srgb, srgb_to_linear

THUMBNAIL_SIDE = 256
_LEVELS = np.arange(256, dtype=np.float64) / 255.0
_REC709_LUMINANCE = np.array([0.2126, 0.7152, 0.0722])


@dataclass(frozen=True)
class LightTuning:
    """Per-preset tuning of the light stage (see ``presets.py``)."""

    max_white_balance_gain: float = 1.3
    minkowski_p: float = 6.0
    target_key: float = 0.13  # linear; ~0.40 in sRGB
    dead_zone_ev: float = 0.4
    max_brighten_ev: float = 1.6
    max_darken_ev: float = 0.5
    black_percentile: float = 0.5
    white_percentile: float = 99.5
    max_black_point: float = 0.06  # sRGB fraction: at most this much is clipped to black
    min_white_point: float = 0.85  # sRGB fraction


@dataclass(frozen=True)
class LightCorrection:
    """The measured correction, before ``intensity`` is applied; also useful for logging and tests."""

    white_balance_gains: tuple[float, float, float]
    exposure_ev: float
    black_point: float
    white_point: float

    def scaled(self, intensity: float) -> LightCorrection:
        gains = tuple(float(g**intensity) for g in self.white_balance_gains)
        return LightCorrection(
            white_balance_gains=gains,  # type: ignore[arg-type]
            exposure_ev=self.exposure_ev * intensity,
            black_point=self.black_point * intensity,
            white_point=1.0 - (1.0 - self.white_point) * intensity,
        )

    def tables(self) -> np.ndarray:
        """A 256x3 uint8 lookup table per channel (sRGB in, sRGB out)."""
        return _to_uint8(self._curves(_LEVELS))

    def _curves(self, levels: np.ndarray) -> np.ndarray:
        linear = srgb_to_linear(levels)[:, None]
        # White balance as a curve with the gain's slope that keeps 1.0 at 1.0: white stays white
        # (a product's white background must not turn yellow), greys and colours get the gain.
        linear = np.column_stack([_exposure_curve(linear[:, 0], g) for g in self.white_balance_gains])
        linear = _exposure_curve(linear, 2.0**self.exposure_ev)
        encoded = linear_to_srgb(linear)
        span = max(self.white_point - self.black_point, 1e-3)
        return np.clip((encoded - self.black_point) / span, 0.0, 1.0)


def _to_uint8(curves: np.ndarray) -> np.ndarray:
    return np.clip(np.round(curves * 255.0), 0, 255).astype(np.uint8)


def _exposure_curve(linear: np.ndarray, gain: float) -> np.ndarray:
    """``g x / (1 + (g - 1) x)``: slope ``g`` in the shadows, 0 and 1 fixed, monotonic for any g > 0."""
    return gain * linear / (1.0 + (gain - 1.0) * linear)


def _exposure_gain_for(mean: float, target: float) -> float:
    """The ``g`` whose curve maps ``mean`` to ``target``."""
    return target * (1.0 - mean) / (mean * (1.0 - target))


def thumbnail(rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = side / max(height, width)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def measure(rgb_thumbnail: np.ndarray, tuning: LightTuning) -> LightCorrection:
    """Estimate the full correction from a (thumbnail) sRGB uint8 image."""
    pixels = rgb_thumbnail.reshape(-1, 3)
    linear = srgb_to_linear(pixels / 255.0)
    luminance = linear @ _REC709_LUMINANCE

    # 1. White balance. Pixels with one or two channels clipped have lost their colour and near-black
    # ones carry none; fully clipped pixels are kept: a blown-out white is evidence of a white light.
    partly_clipped = (pixels.max(axis=1) >= 254) & (pixels.min(axis=1) < 254)
    usable = ~partly_clipped & (luminance > 0.005)
    sample = linear[usable] if usable.sum() >= 64 else linear
    illuminant = np.power(np.mean(np.power(sample, tuning.minkowski_p), axis=0), 1.0 / tuning.minkowski_p)
    illuminant = np.maximum(illuminant, 1e-4)
    grey = float(illuminant @ _REC709_LUMINANCE)
    low, high = 1.0 / tuning.max_white_balance_gain, tuning.max_white_balance_gain
    gains = np.clip(grey / illuminant, low, high)
    # Keep luminance: the gains change colour, exposure is the next step's business.
    gains = gains / float(gains @ _REC709_LUMINANCE)
    balanced = np.column_stack([_exposure_curve(linear[:, c], gains[c]) for c in range(3)])

    # 2. Exposure from the log-average luminance, outside a dead zone around the target key.
    key = float(np.exp(np.mean(np.log(balanced @ _REC709_LUMINANCE + 1e-4))))
    error_ev = math.log2(tuning.target_key / max(key, 1e-4))
    excess = math.copysign(max(0.0, abs(error_ev) - tuning.dead_zone_ev), error_ev)
    exposure_ev = float(np.clip(excess, -tuning.max_darken_ev, tuning.max_brighten_ev))
    # Express it as the curve's shadow slope: the key moves by exactly exposure_ev stops.
    moved_key = min(key * 2.0**exposure_ev, 0.95)
    gain = _exposure_gain_for(min(key, 0.95), moved_key) if key > 0 else 1.0
    exposure_ev = math.log2(max(gain, 1e-3))
    exposed = _exposure_curve(balanced, gain)

    # 3. Percentile stretch on the corrected luminance, in sRGB (where the eye judges black and white).
    encoded = linear_to_srgb(exposed) @ _REC709_LUMINANCE
    black = float(np.percentile(encoded, tuning.black_percentile))
    white = float(np.percentile(encoded, tuning.white_percentile))
    black = float(np.clip(black, 0.0, tuning.max_black_point))
    white = float(np.clip(white, tuning.min_white_point, 1.0))
    return LightCorrection(
        white_balance_gains=(float(gains[0]), float(gains[1]), float(gains[2])),
        exposure_ev=exposure_ev,
        black_point=black,
        white_point=white,
    )


def apply_light(
    rgb: np.ndarray, *, intensity: float, tuning: LightTuning, reference: np.ndarray | None = None
) -> np.ndarray:
    """Correct colour and brightness of an ``HxWx3`` uint8 sRGB image.

    :param reference: the image to measure on (e.g. the input before upscaling); default ``rgb``.
    """
    if intensity <= 0.0:
        return rgb
    correction = measure(thumbnail(rgb if reference is None else reference), tuning).scaled(intensity)
    return apply_tables(rgb, correction.tables())


def apply_tables(rgb: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """One lookup per channel (OpenCV's LUT with a 3-channel table)."""
    return cv2.LUT(rgb, tables.reshape(256, 1, 3))
