"""Loading the photographs the restoration model is trained, validated and benchmarked on.

The lists themselves live in ``leapi_server.engine.restoration_spec`` (``TRAIN_PHOTOS``,
``VALIDATION_PHOTOS``, ``HELD_OUT_PHOTOS``), next to the model they describe. Photographs ship inside
well-known Python packages or the Debian wallpaper packages (``make train`` and ``make bench`` install
those); nothing is downloaded. Training and the engine benchmark use them; the server never does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train.spec import restoration_spec

DEBIAN_PHOTO_PACKAGES = restoration_spec.DEBIAN_PHOTO_PACKAGES
HELD_OUT_PHOTOS = restoration_spec.HELD_OUT_PHOTOS
TRAIN_PHOTOS = restoration_spec.TRAIN_PHOTOS
VALIDATION_PHOTOS = restoration_spec.VALIDATION_PHOTOS

__all__ = ["HELD_OUT_PHOTOS", "MAX_SIDE", "TRAIN_PHOTOS", "VALIDATION_PHOTOS", "load_photo", "photo_file"]

#: Where each Python package keeps its sample photographs, relative to the package.
_PHOTO_FOLDERS = {
    "skimage": "data",
    "sklearn": "datasets/images",
    "matplotlib": "mpl-data/sample_data",
    "pywt": "data",
}
#: Where the Debian wallpaper packages install their files.
DEBIAN_BACKGROUNDS = Path("/usr/share/backgrounds")
#: Wallpapers (2-6k pixels wide) are reduced so the longer side is at most this: catalog-sized photos,
#: whose own JPEG artefacts the reduction averages away, and a benchmark that runs in minutes.
MAX_SIDE = 768


class PhotoMissing(FileNotFoundError):
    """A named photograph is not installed (its Debian package is missing)."""


def photo_file(name: str) -> Path:
    """The file of a ``source:file`` photograph (its Python package is imported here, lazily)."""
    source, _, file = name.partition(":")
    if source in DEBIAN_PHOTO_PACKAGES:
        path = DEBIAN_BACKGROUNDS / file
        if not path.is_file():
            raise PhotoMissing(
                f"{path} is missing: install the Debian package {source} "
                f"(`make wallpapers`, which `make bench` and `make train` run, does: apt-get install)"
            )
        return path
    import importlib

    module = importlib.import_module(source)
    return Path(module.__file__).parent / _PHOTO_FOLDERS[source] / file


def load_photo(name: str) -> np.ndarray:
    """A photograph as uint8 RGB (or grayscale for grayscale ones), the longer side at most ``MAX_SIDE``."""
    path = photo_file(name)
    if path.suffix == ".npz":  # PyWavelets keeps its images as arrays
        with np.load(path) as arrays:
            return np.asarray(arrays["data"], dtype=np.uint8)
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: libjpeg decodes at 1/2, 1/4, 1/8 directly
        image = image.convert("RGB" if image.mode in ("RGB", "RGBA", "P", "CMYK") else "L")
        if max(image.size) > MAX_SIDE:
            scale = MAX_SIDE / max(image.size)
            size = (round(image.width * scale), round(image.height * scale))
            image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return np.asarray(image)
