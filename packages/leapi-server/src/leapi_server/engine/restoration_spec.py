"""What the restoration model expects (its inputs and file), shared by the engine and ``train/train_restoration.py``.

Kept free of heavy imports so the training environment (PyTorch, no server extras) can import it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: The committed model: luma x2 super-resolution + JPEG artifact removal.
MODEL_PATH = Path(__file__).with_name("weights") / "luma_x2.onnx"
SCALE = 2
#: Input names of the ONNX graph: ``planes`` [N, 3, H, W] (see :func:`model_planes`) and ``strength``
#: [1] (see :func:`compression_strength`); output ``residual`` [N, 1, 2H, 2W], added to the bicubic
#: upscale of the luma plane.
INPUT_PLANES = "planes"
INPUT_STRENGTH = "strength"
OUTPUT_RESIDUAL = "residual"
#: Every layer is a 3x3 convolution at the input resolution: this many input pixels on each side
#: influence an output pixel, so tiles overlap by this much.
RECEPTIVE_HALO = 8

#: JPEG's DCT block side (luma).
BLOCK = 8


def model_planes(luma: np.ndarray, grid: tuple[int, int] | None, top: int = 0, left: int = 0) -> np.ndarray:
    """The model's input for a luma plane (float32 in [0, 1]): [3, H, W].

    Plane 0 is the luma; planes 1 and 2 mark the pixels on either side of a JPEG block boundary (columns,
    then rows) with 1.0, so the tiny network knows where blocking can be without having to find it.
    ``grid`` is ``(x, y)``: block boundaries sit just before the columns ``x + 8k`` and rows ``y + 8k``;
    ``None`` (clean input) leaves the planes at 0. ``top``/``left`` place a tile inside the image.
    """
    height, width = luma.shape
    planes = np.zeros((3, height, width), dtype=np.float32)
    planes[0] = luma
    if grid is not None:
        columns = (np.arange(width) + left - grid[0]) % BLOCK
        rows = (np.arange(height) + top - grid[1]) % BLOCK
        planes[1] = ((columns == 0) | (columns == BLOCK - 1)).astype(np.float32)[None, :]
        planes[2] = ((rows == 0) | (rows == BLOCK - 1)).astype(np.float32)[:, None]
    return planes


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


# --------------------------------------------------------------------------------------------------
# The photographs behind the model: every one used, named as ``source:file``.
# ``source`` is a Python package (the file inside its sample-data folder) or one of the Debian
# wallpaper packages in ``DEBIAN_PHOTO_PACKAGES`` (the file under ``/usr/share/backgrounds``).
# Only photographs: the packages' drawings and renders are left out. Nothing is downloaded.
# --------------------------------------------------------------------------------------------------

#: Debian packages whose photographs may be used (``make train`` and ``make bench`` install them).
#: ``ukui-wallpapers`` is allowed too, but it ships drawings and renders only, so none is named here.
DEBIAN_PHOTO_PACKAGES = ("mate-backgrounds", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")

#: What the model is trained on.
TRAIN_PHOTOS = (
    "skimage:motorcycle_left.png",
    "skimage:motorcycle_right.png",
    "skimage:hubble_deep_field.jpg",
    "skimage:retina.jpg",
    "skimage:ihc.png",
    "skimage:coins.png",
    "skimage:moon.png",
    "skimage:brick.png",
    "skimage:grass.png",
    "skimage:gravel.png",
    "skimage:cell.png",
    "skimage:clock_motion.png",
    "skimage:page.png",
    "sklearn:china.jpg",
    "matplotlib:grace_hopper.jpg",
    "pywt:ascent.npz",
    "lomiri-wallpapers-16.04:Wine_by_Jakkub_Mede.jpg",
    "lomiri-wallpapers-16.04:free_by_Peter_Nerlich.jpg",
    "lomiri-wallpapers-16.04:picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "lomiri-wallpapers-16.04:seeding_by_Clements_Engelhardt.jpg",
    "mate-backgrounds:mate/nature/Aqua.jpg",
    "mate-backgrounds:mate/nature/Blinds.jpg",
    "mate-backgrounds:mate/nature/Dune.jpg",
    "mate-backgrounds:mate/nature/FreshFlower.jpg",
    "mate-backgrounds:mate/nature/Garden.jpg",
    "mate-backgrounds:mate/nature/RainDrops.jpg",
    "mate-backgrounds:mate/nature/TwoWings.jpg",
    "mate-backgrounds:mate/nature/Wood.jpg",
    "mate-backgrounds:mate/nature/YellowFlower.jpg",
)
#: For choices (recipe, keep-or-not of a new model): never trained on; the training script reports the
#: model's gains on them.
VALIDATION_PHOTOS = (
    "sklearn:flower.jpg",
    "pywt:aero.npz",
    "lomiri-wallpapers-16.04:Dragonfly_by_Bolly.jpg",
    "lomiri-wallpapers-16.04:Picture_1A_by_freespace.jpg",
    "lomiri-wallpapers-16.04:aitzgorri_by_Aitzol_Berasategi.jpg",
    "mate-backgrounds:mate/nature/LadyBird.jpg",
)
#: The benchmark's test set: never trained on, never used for a choice. Each entry says what kind of
#: content it stands for (the light/tone benchmark reads the kinds).
HELD_OUT_KINDS = {
    "skimage:chelsea.png": "texture",  # a cat's fur
    "lomiri-wallpapers-16.04:life_by_Aitzol_Berasategi.jpg": "texture",  # forest stream, foliage, stones
    "mate-backgrounds:mate/nature/GreenMeadow.jpg": "texture",  # grass blades
    "lomiri-wallpapers-20.04:Kleiber_by_Lukas_Baubkus.jpg": "texture",  # bark and a bird
    "lomiri-wallpapers-16.04:Bridge_by_Sander_Klootwijk.jpg": "architecture",  # cables, a horizon
    "lomiri-wallpapers-16.04:friends_by_Aitzol_Berasategi.jpg": "architecture",  # planks, two dogs
    "skimage:astronaut.png": "face",
    "skimage:camera.png": "face",  # the cameraman (greyscale)
    "skimage:coffee.png": "product",
    "lomiri-wallpapers-16.04:Picture_0B_by_freespace.jpg": "product",  # a fig on a plate on stone
    "lomiri-wallpapers-16.04:greentock_by_Peter_Nerlich.jpg": "product",  # a wall clock
    "skimage:rocket.jpg": "dark",  # a launch pad at dusk
    "lomiri-wallpapers-16.04:sunset_by_Aitzol_Berasategi.jpg": "dark",  # against the sun, dark ground
    "mate-backgrounds:mate/nature/Storm.jpg": "dark",  # a storm sky over a road
}
HELD_OUT_PHOTOS = tuple(HELD_OUT_KINDS)
#: Held-out photographs with an intentional colour mood, which the light and tone stages must keep (the
#: benchmark also grades the other held-out photos into moods; ``devkit/moods.py``).
HELD_OUT_MOODS = {
    "skimage:rocket.jpg": "dusk",
    "lomiri-wallpapers-16.04:sunset_by_Aitzol_Berasategi.jpg": "sunset",
    "mate-backgrounds:mate/nature/Storm.jpg": "cold storm light",
}
