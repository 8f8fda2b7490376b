"""Restoration: JPEG artifact removal and detail recovery on luma, with the learned x2 model.

The model (``weights/luma_x2.onnx``, trained by ``train/train_restoration.py``) maps a low-resolution
luma plane and the input's compression strength to a residual over its bicubic x2 upscale. Other
factors apply it repeatedly and finish with a high-quality resize; same-size and smaller outputs use
its output averaged back down (artifact removal without resampling artefacts). When the model file is
absent the classical path (block-boundary filter, Lanczos, unsharp mask) runs instead, with the same
levels.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from leapi_server.engine.color import rgb_to_ycrcb, ycrcb_to_rgb
from leapi_server.engine.geometry import resize
from leapi_server.engine.restoration_spec import (
    INPUT_PLANES,
    INPUT_STRENGTH,
    MODEL_PATH,
    RECEPTIVE_HALO,
    SCALE,
    compression_strength,
    model_planes,
)

log = logging.getLogger(__name__)


def _default_threads() -> int:
    """Threads one model run may use: ``LEAPI_ENGINE_THREADS``, else ``OMP_NUM_THREADS`` (which a process
    pool sets to its per-worker share of the cores), else up to 4 cores."""
    for variable in ("LEAPI_ENGINE_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return min(4, os.cpu_count() or 1)


DEFAULT_THREADS = _default_threads()
#: Rows of low-resolution input per model call: bounds working memory (16 float32 feature maps of a
#: strip with its halo: ~7 MB per 1000 px of width) whatever the image size. Measured on a 900x600 luma
#: with one thread: 32 rows 280 ms, 64 rows 237 ms, 96 rows 222 ms, whole image 200 ms.
STRIP_ROWS = 96
#: Below this reduction factor, a compressed input is restored before downscaling; from it on the
#: antialiasing filter alone removes the 8-pixel block grid (its frequency lands at the output's Nyquist).
RESTORE_BEFORE_DOWNSCALE_BELOW = 4.0
#: Inputs at least this good (estimated JPEG quality) are treated as clean: the model is told strength 0.
CLEAN_FROM_QUALITY = 98


@dataclass(frozen=True)
class LevelSettings:
    """What ``restoration_level`` 1-10 means. Every column is monotonic in the level.

    * ``blend``: weight of the model's residual over the plain bicubic upscale (level 1 stays close to
      the input, level 5 is the full model, as trained and benchmarked);
    * ``extra_strength``: added to the measured compression strength: the model de-blocks and
      de-noises as if the input were more compressed than its tables say;
    * ``sharpen``: unsharp-mask amount on the final luma.
    """

    blend: float
    extra_strength: float
    sharpen: float


def level_settings(level: int) -> LevelSettings:
    if not 1 <= level <= 10:
        raise ValueError(f"restoration_level must be 1-10, got {level}")
    above = max(0, level - 5)
    return LevelSettings(blend=min(level, 5) / 5, extra_strength=0.05 * above, sharpen=0.12 * above)


# --------------------------------------------------------------------------------------------------
# Model runtimes
# --------------------------------------------------------------------------------------------------


class LumaModel(Protocol):
    """The built-in model's runtime: told the compression, it answers a residual over bicubic x2."""

    def residual(self, planes: np.ndarray, strength: float) -> np.ndarray:
        """``planes`` 3xHxW float32 (``model_planes``) -> 2Hx2W float32 residual over the bicubic upscale."""


@runtime_checkable
class Upscaler(Protocol):
    """A user's super-resolution model (``engine.external.ExternalModel``): image in, larger image out."""

    scale: int
    #: 3: it enlarges RGB images; 1: luma planes (the chroma is then resampled classically).
    channels: int

    def upscale(self, image: np.ndarray, *, blend: float = 1.0) -> np.ndarray:
        """``H x W`` (luma) or ``H x W x 3`` (RGB) uint8 -> ``scale`` times larger; ``blend`` weighs the
        model's output over the bicubic upscale."""


#: What restores an image: the built-in model, a user's model, or ``None`` (the classical path).
Restorer = LumaModel | Upscaler | None


#: Whether onnxruntime's intra-op threads spin while waiting for work (its default). Only matters with
#: more than one thread per worker (docs/benchmarks/engine.md, "Threads per worker").
SPIN_WAIT = True


def onnx_session(path: Path, threads: int, *, spin: bool = SPIN_WAIT) -> Any:
    """An onnxruntime CPU session for one worker process: ``threads`` intra-op threads (the worker's share
    of the cores), the graph's operators run one after another (one inter-op thread: these graphs are a
    chain), every graph optimisation on.

    :raises Exception: onnxruntime's own, when the file is not a model it can load.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModel:
    """onnxruntime, CPU provider; ``run`` is thread-safe so one session serves every worker thread."""

    def __init__(self, path: Path, threads: int, *, spin: bool = SPIN_WAIT) -> None:
        self.session = onnx_session(path, threads, spin=spin)

    def residual(self, planes: np.ndarray, strength: float) -> np.ndarray:
        feed = {INPUT_PLANES: planes[None], INPUT_STRENGTH: np.array([strength], dtype=np.float32)}
        return self.session.run(None, feed)[0][0, 0]


class OpenCvDnnModel:
    """OpenCV's DNN module. A ``cv2.dnn.Net`` is not thread-safe: one per thread."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path, self.threads = path, threads
        self.local = threading.local()

    def residual(self, planes: np.ndarray, strength: float) -> np.ndarray:
        net = getattr(self.local, "net", None)
        if net is None:
            net = self.local.net = cv2.dnn.readNetFromONNX(str(self.path))
        cv2.setNumThreads(self.threads)
        net.setInput(np.ascontiguousarray(planes[None]), INPUT_PLANES)
        net.setInput(np.array([strength], dtype=np.float32), INPUT_STRENGTH)
        return net.forward()[0, 0]


BACKENDS: dict[str, Callable[[Path, int], LumaModel]] = {
    "onnxruntime": OnnxRuntimeModel,
    "opencv": OpenCvDnnModel,
}
#: onnxruntime measured faster than OpenCV DNN for this graph (docs/benchmarks/engine.md).
DEFAULT_BACKEND = "onnxruntime"


@functools.lru_cache(maxsize=8)
def load_model(
    path: Path = MODEL_PATH, backend: str = DEFAULT_BACKEND, threads: int = DEFAULT_THREADS
) -> LumaModel | None:
    """The model runtime, or ``None`` (classical path) when the file is absent or cannot be loaded."""
    if not path.is_file():
        log.warning("restoration model %s not found: using the classical restoration path", path)
        return None
    try:
        return BACKENDS[backend](path, threads)
    except Exception:
        log.exception("cannot load restoration model %s with %s: using the classical path", path, backend)
        return None


def residual_strips(
    model: LumaModel,
    luma: np.ndarray,
    strength: float,
    grid: tuple[int, int] | None = None,
    rows: int = STRIP_ROWS,
) -> Iterator[tuple[int, np.ndarray]]:
    """The model's residual for a luma plane (float32 in [0, 1]), strip by strip: ``(first output row, strip)``.

    Each strip is computed with ``RECEPTIVE_HALO`` rows of context on both sides, so the strips put
    together equal a whole-image run exactly, while memory stays bounded by one strip.
    """
    height = luma.shape[0]
    if height <= rows + 2 * RECEPTIVE_HALO:
        yield 0, model.residual(model_planes(luma, grid), strength)
        return
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        lo, hi = max(0, top - RECEPTIVE_HALO), min(height, bottom + RECEPTIVE_HALO)
        strip = model.residual(model_planes(luma[lo:hi], grid, top=lo), strength)
        yield top * SCALE, strip[(top - lo) * SCALE : (bottom - lo) * SCALE]


def run_tiled(
    model: LumaModel,
    luma: np.ndarray,
    strength: float,
    grid: tuple[int, int] | None = None,
    rows: int = STRIP_ROWS,
) -> np.ndarray:
    """The whole residual plane (``residual_strips`` put together)."""
    height, width = luma.shape
    out = np.empty((height * SCALE, width * SCALE), dtype=np.float32)
    for top, strip in residual_strips(model, luma, strength, grid, rows):
        out[top : top + strip.shape[0]] = strip
    return out


# --------------------------------------------------------------------------------------------------
# Blockiness: a measurement (tests, benchmark) and an estimate for inputs without quantisation tables
# --------------------------------------------------------------------------------------------------


def _grid_profile(luma: np.ndarray, axis: int) -> np.ndarray:
    """Mean absolute step across each of the 8 grid phases along ``axis`` (1 = vertical edges)."""
    plane = luma.astype(np.float32)
    steps = np.abs(np.diff(plane, axis=axis)).mean(axis=1 - axis)
    # steps[i] is the edge between i and i+1; JPEG block edges sit at i+1 = 8k.
    phases = (np.arange(steps.size) + 1) % 8
    return np.array([steps[phases == p].mean() if np.any(phases == p) else 0.0 for p in range(8)])


def detect_block_grid(luma: np.ndarray) -> tuple[int, int]:
    """Where the 8x8 grid's boundaries are, ``(x, y)`` as in ``model_planes``: the strongest phase."""
    return int(np.argmax(_grid_profile(luma, 1))), int(np.argmax(_grid_profile(luma, 0)))


def blockiness(luma: np.ndarray) -> float:
    """How much stronger edges are on the strongest 8-pixel grid than elsewhere: ~1.0 for clean images.

    A GBIM-style measure (Wu & Yuen 1997): the grid's phase is found, not assumed, so crops and
    rotations after compression are handled.
    """
    if min(luma.shape) < 32:
        return 1.0
    ratios = []
    for axis in (0, 1):
        profile = _grid_profile(luma, axis)
        grid = int(np.argmax(profile))
        others = np.delete(profile, grid).mean()
        ratios.append(profile[grid] / max(others, 1e-3))
    return float(np.mean(ratios))


#: Blockiness of Pillow/libjpeg JPEGs of natural photos at quality ~90, 75, 40, 20, 10 (measured on
#: scikit-image photos) and the compression strength of those qualities; clean photos measure 1.0-1.1.
_BLOCKINESS_POINTS = (1.15, 1.3, 1.6, 2.0, 2.8)
_STRENGTH_POINTS = (0.0, 0.6, 1.1, 1.55, 2.2)
#: Estimates below this are noise (edges that happen to fall on the grid), not compression.
_MIN_ESTIMATED_STRENGTH = 0.15


def strength_from_blockiness(luma: np.ndarray) -> float:
    """A compression strength for inputs without JPEG tables (a JPEG re-saved as PNG, say)."""
    strength = float(np.interp(blockiness(luma), _BLOCKINESS_POINTS, _STRENGTH_POINTS))
    return strength if strength >= _MIN_ESTIMATED_STRENGTH else 0.0


def input_strength(luma: np.ndarray, jpeg_quality: int | None) -> float:
    if jpeg_quality is not None:
        return 0.0 if jpeg_quality >= CLEAN_FROM_QUALITY else compression_strength(jpeg_quality)
    return strength_from_blockiness(luma)


# --------------------------------------------------------------------------------------------------
# Classical path
# --------------------------------------------------------------------------------------------------


def deblock_classical(luma: np.ndarray, strength: float) -> np.ndarray:
    """Smooth small steps across the 8x8 grid (like a video codec's loop filter), keep real edges."""
    if strength <= 0:
        return luma
    plane = luma.astype(np.float32)
    threshold = 6.0 + 18.0 * strength  # steps larger than this are edges, left alone
    for axis in (0, 1):
        grid = int(np.argmax(_grid_profile(luma, axis)))
        moved = np.moveaxis(plane, axis, 0)  # view: edges between rows k-1 and k
        first = grid if grid >= 2 else grid + 8
        rows = np.arange(first, moved.shape[0] - 1, 8)
        if rows.size == 0:
            continue
        p1, p0, q0, q1 = moved[rows - 2], moved[rows - 1], moved[rows], moved[rows + 1]
        step = q0 - p0
        flat = (
            (np.abs(step) < threshold) & (np.abs(p1 - p0) < threshold / 2) & (np.abs(q1 - q0) < threshold / 2)
        )
        delta = np.where(flat, step, 0.0)
        moved[rows - 2] = p1 + delta / 6
        moved[rows - 1] = p0 + delta / 3
        moved[rows] = q0 - delta / 3
        moved[rows + 1] = q1 - delta / 6
    return np.clip(plane + 0.5, 0, 255).astype(np.uint8)


def unsharp(luma: np.ndarray, amount: float, sigma: float = 1.0, threshold: float = 2.0) -> np.ndarray:
    """Unsharp mask; differences below ``threshold`` (noise, flat areas) are not amplified."""
    if amount <= 0:
        return luma
    plane = luma.astype(np.float32)
    detail = plane - cv2.GaussianBlur(plane, (0, 0), sigma)
    detail = np.sign(detail) * np.maximum(np.abs(detail) - threshold, 0.0)
    return np.clip(plane + amount * detail + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def _x2(
    model: LumaModel | None, luma: np.ndarray, strength: float, blend: float, grid: tuple[int, int] | None
) -> np.ndarray:
    """One x2 step: the model's residual (blended) over the bicubic upscale; classical without a model."""
    height, width = luma.shape
    if model is None:
        cleaned = deblock_classical(luma, strength)
        upscaled = cv2.resize(cleaned, (width * SCALE, height * SCALE), interpolation=cv2.INTER_LANCZOS4)
        return unsharp(upscaled, 0.6 * blend, sigma=1.2, threshold=1.0)
    # Strip by strip into the bicubic upscale: no full-size float plane is ever held (a 25 MP output
    # would need 100 MB per plane).
    out = cv2.resize(luma, (width * SCALE, height * SCALE), interpolation=cv2.INTER_CUBIC)
    planes = luma.astype(np.float32) * (1 / 255)
    for top, strip in residual_strips(model, planes, strength, grid if strength > 0 else None):
        rows = out[top : top + strip.shape[0]]
        rows[...] = np.clip(rows + strip * (255.0 * blend) + 0.5, 0, 255)
    return out


def passes_for(factor: float, scale: int) -> int:
    """Model passes for an enlargement by ``factor``: the count whose total scale is nearest to it in
    log terms, at least one (the last pass lands within a factor of sqrt(scale) of the target; a
    high-quality resize takes the rest of the way, up or down)."""
    return max(1, math.floor(math.log(factor) / math.log(scale) + 0.5))


def _to_size(
    image: np.ndarray,
    size: tuple[int, int],
    *,
    strength: float,
    scale: int,
    step: Callable[[np.ndarray, float], np.ndarray],
) -> np.ndarray:
    """Restore and resample ``image`` to ``size`` (width, height) with ``step(image, strength)``, one
    model pass of ``scale``. Only the first pass is told the input's compression."""
    height, width = image.shape[:2]
    out_w, out_h = size
    factor = math.sqrt(out_w * out_h / (width * height))
    if factor > 1.0:
        plane = image
        for index in range(passes_for(factor, scale)):
            plane = step(plane, strength if index == 0 else 0.0)
        return resize(plane, size)
    if factor > 1.0 / RESTORE_BEFORE_DOWNSCALE_BELOW and strength > 0:
        # Artifact removal at the input's own resolution: the model's output averaged back down (area).
        restored = step(image, strength)
        return resize(cv2.resize(restored, (width, height), interpolation=cv2.INTER_AREA), size)
    return resize(image, size)


def restore_luma(
    luma: np.ndarray,
    size: tuple[int, int],
    *,
    level: int,
    strength: float,
    model: Restorer,
    grid: tuple[int, int] | None = None,
    sharpen: float = 0.0,
) -> np.ndarray:
    """Restore and resample one luma plane to ``size`` (width, height).

    :param strength: the input's compression strength (:func:`input_strength`).
    :param model: the built-in model, a user's luma model, or ``None`` (classical).
    :param grid: where the input's JPEG block boundaries are (``codec.DecodedImage.block_grid``);
        ``None`` finds them from the pixels when the input is compressed.
    :param sharpen: the preset's own sharpening, added to the level's.
    """
    settings = level_settings(level)
    if isinstance(model, Upscaler):
        # A user's model is not told the compression: the level's extra strength does not apply.
        plane = _to_size(
            luma,
            size,
            strength=strength,
            scale=model.scale,
            step=lambda image, _strength: model.upscale(image, blend=settings.blend),
        )
        return unsharp(plane, settings.sharpen + sharpen)
    if strength > 0 and grid is None:
        grid = detect_block_grid(luma)
    plane = _to_size(
        luma,
        size,
        strength=strength + settings.extra_strength,
        scale=SCALE,
        step=lambda image, step_strength: _x2(model, image, step_strength, settings.blend, grid),
    )
    return unsharp(plane, settings.sharpen + sharpen)


def restore_rgb(
    rgb: np.ndarray,
    size: tuple[int, int],
    *,
    level: int,
    strength: float,
    model: Upscaler,
    sharpen: float = 0.0,
) -> np.ndarray:
    """Restore and resample an RGB image to ``size`` with a user's RGB model (colour through the model).

    Levels as for luma: ``blend`` weighs the model's output over bicubic, then the level's sharpening
    (on the luma only, so colours do not fringe).
    """
    settings = level_settings(level)
    out = _to_size(
        rgb,
        size,
        strength=strength,
        scale=model.scale,
        step=lambda image, _strength: model.upscale(image, blend=settings.blend),
    )
    amount = settings.sharpen + sharpen
    if amount <= 0:
        return out
    ycrcb = rgb_to_ycrcb(out)
    ycrcb[..., 0] = unsharp(ycrcb[..., 0], amount)
    return ycrcb_to_rgb(ycrcb)


def restore_chroma(chroma: np.ndarray, size: tuple[int, int], *, subsampled: bool) -> np.ndarray:
    """Resample the CrCb planes classically (their detail is not restored: the eye barely resolves it).

    A 4:2:0 JPEG's chroma only ever had half the resolution; it is brought back to that first (area
    average), which also softens the 16-pixel chroma blocks, then upscaled smoothly.
    """
    height, width = chroma.shape[:2]
    if subsampled and width >= 4 and height >= 4:
        chroma = cv2.resize(chroma, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    return resize(chroma, size)
