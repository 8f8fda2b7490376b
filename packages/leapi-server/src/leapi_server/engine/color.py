"""Colour-space conversions shared by the stages (and by the training script, so both see the same luma)."""

from __future__ import annotations

import cv2
import numpy as np


def rgb_to_ycrcb(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 Y'CrCb (the JPEG colour space), uint8 in, uint8 out."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)


def ycrcb_to_rgb(ycrcb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Y' of an ``HxWx3`` uint8 sRGB image (or the image itself when it has one channel)."""
    if rgb.ndim == 2:
        return rgb
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., 0]


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """sRGB-encoded [0, 1] -> linear light [0, 1] (IEC 61966-2-1)."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * values ** (1 / 2.4) - 0.055)
