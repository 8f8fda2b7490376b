"""The photographs the restoration model is trained, validated and benchmarked on.

Only photographs that ship inside well-known Python packages: nothing is downloaded. Training and the
engine benchmark use them; the server never does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Training photographs, as ``package:file``: only photographs that ship inside well-known Python
#: packages (nothing is downloaded; :func:`photo_file` finds them in the installed package).
TRAIN_PHOTOS = (
    "skimage:astronaut.png",
    "skimage:motorcycle_left.png",
    "skimage:motorcycle_right.png",
    "skimage:hubble_deep_field.jpg",
    "skimage:retina.jpg",
    "skimage:ihc.png",
    "skimage:camera.png",
    "skimage:coins.png",
    "skimage:moon.png",
    "skimage:brick.png",
    "skimage:grass.png",
    "skimage:gravel.png",
    "skimage:cell.png",
    "skimage:clock_motion.png",
    "skimage:page.png",
    "sklearn:china.jpg",
    "sklearn:flower.jpg",
    "matplotlib:grace_hopper.jpg",
    "pywt:aero.npz",
    "pywt:ascent.npz",
)
#: Training photographs set aside while choosing the training recipe (``--hold-validation``): the
#: recipe is chosen on these, the committed model is then trained on every ``TRAIN_PHOTOS`` entry.
VALIDATION_PHOTOS = ("skimage:astronaut.png", "sklearn:flower.jpg", "pywt:aero.npz")
#: Never trained on, nor used to choose the recipe: the benchmark's test set (a cat, a cup of coffee, a
#: rocket launch; all colour).
HELD_OUT_PHOTOS = ("skimage:chelsea.png", "skimage:coffee.png", "skimage:rocket.jpg")

#: Where each package keeps its sample photographs, relative to the package.
_PHOTO_FOLDERS = {
    "skimage": "data",
    "sklearn": "datasets/images",
    "matplotlib": "mpl-data/sample_data",
    "pywt": "data",
}


def photo_file(name: str) -> Path:
    """The file of a ``package:file`` photograph inside its installed package (imported here, lazily)."""
    import importlib

    package, _, file = name.partition(":")
    module = importlib.import_module(package)
    return Path(module.__file__).parent / _PHOTO_FOLDERS[package] / file


def load_photo(name: str) -> np.ndarray:
    """A ``package:file`` photograph as uint8 RGB, or grayscale for grayscale photographs."""
    path = photo_file(name)
    if path.suffix == ".npz":  # PyWavelets keeps its images as arrays
        with np.load(path) as arrays:
            return np.asarray(arrays["data"], dtype=np.uint8)
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB" if image.mode in ("RGB", "RGBA", "P", "CMYK") else "L"))
