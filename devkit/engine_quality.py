"""How the engine is judged on a photograph: degrade it the way poor marketplace photos are (antialiased
bicubic downscale, then JPEG or kept uncompressed), bring it back to its size with the engine or a classical
upscale, and compare on luma (PSNR, SSIM, borders cropped).

Shared by the engine benchmark (``tests/bench/bench_engine.py``) and the keep-or-not check of a retrained
model (``train/compare_on_validation.py``), so both judge the same way.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

from leapi.models import MarketplacePreset
from leapi_server.engine import enhance
from leapi_server.engine.color import luma

#: JPEG qualities of the degraded inputs (``None``: kept uncompressed, PNG).
QUALITIES: tuple[int | None, ...] = (20, 40, 75, None)
#: Pixels cropped from each side before the metrics (resampling edge effects).
BORDER = 8


def encode(rgb: np.ndarray, quality: int | None) -> bytes:
    buffer = io.BytesIO()
    if quality is None:
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)  # Pillow's default 4:2:0
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def degrade(original: np.ndarray, scale: int, quality: int | None) -> tuple[np.ndarray, bytes]:
    """(cropped original, degraded input file)."""
    height, width = original.shape[:2]
    original = original[: height - height % (scale * 8), : width - width % (scale * 8)]
    height, width = original.shape[:2]
    small = np.asarray(
        Image.fromarray(original).resize((width // scale, height // scale), Image.Resampling.BICUBIC)
    )
    return original, encode(small, quality)


def y_metrics(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    ref = luma(reference)[BORDER:-BORDER, BORDER:-BORDER].astype(np.float64)
    out = luma(candidate)[BORDER:-BORDER, BORDER:-BORDER].astype(np.float64)
    mse = float(np.mean((ref - out) ** 2))
    psnr = 10 * np.log10(255.0**2 / max(mse, 1e-10))
    ssim = structural_similarity(ref, out, data_range=255.0, gaussian_weights=True, sigma=1.5)
    return psnr, float(ssim)


def engine_restore(
    data: bytes, size: tuple[int, int], *, level: int = 5, model: object = "default"
) -> np.ndarray:
    operation = MarketplacePreset(
        width=size[0],
        height=size[1],
        restoration_level=level,
        lightai_intensity=0.0,
        toneai_intensity=0.0,
        image_format="PNG",
    )
    kwargs: dict[str, Any] = {} if model == "default" else {"model": model}
    return decode(enhance(data, operation, **kwargs).data)


def classical_upscale(data: bytes, size: tuple[int, int], method: Image.Resampling) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB").resize(size, method))
