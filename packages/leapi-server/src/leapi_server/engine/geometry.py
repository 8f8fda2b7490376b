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
    """Resample an ``HxW`` or ``HxWxC`` uint8 image to ``size`` (width, height) with a high-quality filter.

    Downscaling uses Pillow's Lanczos, which widens its kernel with the reduction (true antialiasing;
    OpenCV's Lanczos does not, and aliases). Upscaling uses OpenCV's bicubic (fast; the restoration
    stage does the real upscaling work). A 4-channel image is RGBA and is resampled premultiplied, so
    the colour of transparent pixels does not bleed into edges. Equal size returns the input itself.
    """
    height, width = image.shape[:2]
    out_w, out_h = size
    if (out_w, out_h) == (width, height):
        return image
    channels = 1 if image.ndim == 2 else image.shape[2]
    if out_w <= width and out_h <= height:
        if image.ndim == 2:
            return _pil_downscale(image, "L", size)
        if channels in (3, 4):
            # Pillow resamples RGBA premultiplied internally.
            return _pil_downscale(image, "RGB" if channels == 3 else "RGBA", size)
        return np.dstack([_pil_downscale(image[..., c], "L", size) for c in range(channels)])
    if channels == 4:
        return _upscale_premultiplied(image, size)
    out = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    return out[..., None] if image.ndim == 3 and out.ndim == 2 else out


def _pil_downscale(image: np.ndarray, mode: str, size: tuple[int, int]) -> np.ndarray:
    # reducing_gap: a fast integer box reduction first, then Lanczos over the last factor of <= 3
    # (visually indistinguishable from a full Lanczos, several times faster on big reductions).
    pil = Image.fromarray(image, mode=mode)
    return np.asarray(pil.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))


def _upscale_premultiplied(rgba: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    premultiplied = rgba[..., :3].astype(np.float32) * alpha
    stacked = np.concatenate([premultiplied, alpha * 255.0], axis=2)
    out = cv2.resize(stacked, size, interpolation=cv2.INTER_CUBIC)
    out_alpha = np.clip(out[..., 3:4], 0.0, 255.0)
    safe = np.where(out_alpha > 0.5, out_alpha / 255.0, 1.0)
    rgb = np.clip(out[..., :3] / safe, 0.0, 255.0)
    return np.concatenate([rgb, out_alpha], axis=2).round().astype(np.uint8)
