"""Output size and resampling."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def fit_box(width: int, height: int, box_width: int | None, box_height: int | None) -> tuple[int, int]:
    """The largest size with the input's aspect ratio that fits inside the box, one side equal to it.

    The docs: "the API will never stretch or squeeze an image". A missing side leaves that dimension
    unconstrained; both missing keep the input size. Works the same for up- and downscaling.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    for side in (box_width, box_height):
        if side is not None and side < 1:
            raise ValueError(f"box sides must be positive, got {box_width}x{box_height}")
    if box_width is None and box_height is None:
        return width, height
    if box_height is None or (box_width is not None and box_width * height <= box_height * width):
        # The width binds: it is exactly the box width.
        assert box_width is not None
        out_h = max(1, round(height * box_width / width))
        if box_height is not None:
            out_h = min(out_h, box_height)
        return box_width, out_h
    out_w = max(1, round(width * box_height / height))
    if box_width is not None:
        out_w = min(out_w, box_width)
    return out_w, box_height


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample an ``HxWxC`` uint8 image to ``size`` (width, height) with a high-quality filter.

    Downscaling uses Pillow's Lanczos, which widens its kernel with the scale factor (true
    antialiasing; OpenCV's Lanczos does not, and aliases). A 4-channel image is treated as RGBA and
    resampled premultiplied by Pillow, so transparent pixels' colour does not bleed into edges.
    Upscaling uses OpenCV's bicubic (fast, the classical reference). Equal size returns the input.
    """
    height, width = image.shape[:2]
    out_w, out_h = size
    if (out_w, out_h) == (width, height):
        return image
    if out_w <= width and out_h <= height:
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[image.shape[2] if image.ndim == 3 else 1]
        pil = Image.fromarray(image, mode=mode)
        out = np.asarray(pil.resize((out_w, out_h), Image.Resampling.LANCZOS, reducing_gap=3.0))
        return out
    if image.ndim == 3 and image.shape[2] == 4:
        return _resize_premultiplied(image, (out_w, out_h))
    return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_CUBIC)


def _resize_premultiplied(rgba: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    premultiplied = rgba[..., :3].astype(np.float32) * alpha
    stacked = np.concatenate([premultiplied, alpha * 255.0], axis=2)
    out = cv2.resize(stacked, size, interpolation=cv2.INTER_CUBIC)
    out_alpha = np.clip(out[..., 3:4], 0.0, 255.0)
    safe = np.where(out_alpha > 0.5, out_alpha / 255.0, 1.0)
    rgb = np.clip(out[..., :3] / safe, 0.0, 255.0)
    return np.concatenate([rgb, out_alpha], axis=2).round().astype(np.uint8)
