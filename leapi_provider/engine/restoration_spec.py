"""What the restoration model expects, shared by the engine and ``train/train_restoration.py``.

Kept free of heavy imports so the training environment (PyTorch, no server extras) can import it.
"""

from __future__ import annotations

import math
from pathlib import Path

#: The committed model: luma x2 super-resolution + JPEG artifact removal.
MODEL_PATH = Path(__file__).with_name("weights") / "luma_x2.onnx"
SCALE = 2
#: Input names of the ONNX graph: ``luma`` [N, 1, H, W] in [0, 1] and ``strength`` [1] (see below);
#: output ``residual`` [N, 1, 2H, 2W], added to the bicubic upscale of ``luma``.
INPUT_LUMA = "luma"
INPUT_STRENGTH = "strength"
OUTPUT_RESIDUAL = "residual"
#: Every layer is a 3x3 convolution at the input resolution: this many input pixels on each side
#: influence an output pixel, so tiles overlap by this much.
RECEPTIVE_HALO = 8

#: Training photographs: files shipped in scikit-image's ``data`` folder (nothing is downloaded).
TRAIN_PHOTOS = (
    "astronaut.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "cell.png",
    "clock_motion.png",
    "page.png",
)
#: Never trained on: the benchmark's test set (a cat, a cup of coffee, a rocket launch; all colour).
HELD_OUT_PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")


def compression_strength(jpeg_quality: int | None) -> float:
    """How hard the input was compressed, as the model is told it: 0 = clean, ~1 at quality 50.

    The square root of the IJG table scale (quantisation step relative to quality 50): quantisation
    noise grows with the step, and the root spreads the useful range (quality 10 -> 2.2, 20 -> 1.6,
    75 -> 0.7, 95 -> 0.3) evenly for the network.
    """
    if jpeg_quality is None or jpeg_quality >= 100:
        return 0.0
    quality = max(1, int(jpeg_quality))
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return math.sqrt(scale / 100)
