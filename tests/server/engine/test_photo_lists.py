from __future__ import annotations

import pytest

from leapi_server.engine import restoration_spec
from train.photos import PhotoMissing, photo_file

#: Pure image functions: no server, so once, not once per server backend.
pytestmark = pytest.mark.own_backends

PYTHON_SOURCES = {"skimage", "sklearn", "matplotlib", "pywt"}
KINDS = {"texture", "architecture", "face", "product", "dark"}


def test_train_validation_and_held_out_are_disjoint():
    train = set(restoration_spec.TRAIN_PHOTOS)
    validation = set(restoration_spec.VALIDATION_PHOTOS)
    held_out = set(restoration_spec.HELD_OUT_PHOTOS)
    assert not train & validation
    assert not train & held_out
    assert not validation & held_out


def test_every_photo_comes_from_an_allowed_source():
    allowed = PYTHON_SOURCES | set(restoration_spec.DEBIAN_PHOTO_PACKAGES)
    names = (
        restoration_spec.TRAIN_PHOTOS + restoration_spec.VALIDATION_PHOTOS + restoration_spec.HELD_OUT_PHOTOS
    )
    assert {name.partition(":")[0] for name in names} <= allowed


def test_held_out_set_is_wide_enough():
    # Issue 12: at least 12 photos, every kind of content represented, a few dark scenes.
    kinds = list(restoration_spec.HELD_OUT_KINDS.values())
    assert len(kinds) >= 12
    assert set(kinds) == KINDS
    assert kinds.count("dark") >= 2


def test_a_missing_wallpaper_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr("train.photos.DEBIAN_BACKGROUNDS", tmp_path)
    with pytest.raises(PhotoMissing, match=r"install the Debian package mate-backgrounds .*apt-get install"):
        photo_file("mate-backgrounds:mate/nature/Storm.jpg")
