from __future__ import annotations

import io
import itertools

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from leapi.models import MarketplacePreset
from leapi_server.engine import enhance
from leapi_server.engine.codec import decode
from leapi_server.engine.color import luma
from leapi_server.engine.restoration import (
    CLEAN_FROM_QUALITY,
    OnnxRuntimeModel,
    OpenCvDnnModel,
    blockiness,
    detect_block_grid,
    input_strength,
    level_settings,
    load_model,
    run_tiled,
)
from leapi_server.engine.restoration_spec import MODEL_PATH, compression_strength, model_planes
from tests.server.engine.images import encode, pixels, scene
from train.photos import HELD_OUT_PHOTOS, load_photo

#: Pure image functions: no server, so once, not once per server backend.
pytestmark = pytest.mark.own_backends

MODEL = load_model()
#: Held-out photos (issue 12) that the committed model, trained before that issue, had been trained on.
COMMITTED_MODEL_SAW_HELD_OUT = {"skimage:astronaut.png", "skimage:camera.png"}
PATHS = {"model": MODEL, "classical": None}
OFF = {"lightai_intensity": 0.0, "toneai_intensity": 0.0, "image_format": "PNG"}


def _photo_crop(
    name: str = "skimage:chelsea.png", box: tuple[int, int, int, int] = (100, 40, 292, 232)
) -> np.ndarray:
    left, top, right, bottom = box
    return load_photo(name)[top:bottom, left:right]


def _restore(data: bytes, size: tuple[int, int] | None, level: int, model) -> np.ndarray:
    width, height = size if size else (None, None)
    operation = MarketplacePreset(width=width, height=height, restoration_level=level, **OFF)
    return pixels(enhance(data, operation, model=model).data)


def _psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    a, b = luma(reference)[4:-4, 4:-4].astype(float), luma(candidate)[4:-4, 4:-4].astype(float)
    return float(10 * np.log10(255**2 / np.mean((a - b) ** 2)))


def test_committed_model_is_small_and_loads():
    assert MODEL_PATH.stat().st_size < 1_000_000
    assert MODEL is not None
    meta = onnxruntime.InferenceSession(str(MODEL_PATH)).get_modelmeta().custom_metadata_map
    assert 10_000 <= int(meta["parameters"]) <= 30_000
    import json

    trained = set(json.loads(meta["train_photos"]))
    # Photographs shipped inside Python packages only (the committed model predates the wallpapers).
    assert {name.partition(":")[0] for name in trained} <= {"skimage", "sklearn", "matplotlib", "pywt"}
    # It was trained before issue 12 widened the held-out set; of the held-out photos it saw only these
    # two faces, which the benchmark marks (from this metadata) and leaves out of its clean means. A model
    # trained by today's make train sees none (TRAIN_PHOTOS is disjoint from the held-out set).
    assert trained & set(HELD_OUT_PHOTOS) == COMMITTED_MODEL_SAW_HELD_OUT


def test_missing_model_falls_back_to_classical(tmp_path):
    assert load_model(tmp_path / "absent.onnx") is None
    out = _restore(encode(scene(), "JPEG", quality=30), (256, 192), 5, None)
    assert out.shape == (192, 256, 3)


@pytest.mark.parametrize("backend", [OnnxRuntimeModel, OpenCvDnnModel])
@pytest.mark.parametrize("size", [(96, 80), (97, 83)])
def test_tiled_run_equals_whole_run(backend, size):
    model = backend(MODEL_PATH, 1)
    plane = luma(scene(*size)).astype(np.float32) / 255
    whole = model.residual(model_planes(plane, (3, 5)), 0.8)
    tiled = run_tiled(model, plane, 0.8, (3, 5), rows=12)
    assert whole.shape == (size[1] * 2, size[0] * 2)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_backends_agree():
    planes = model_planes(luma(scene(64, 48)).astype(np.float32) / 255, (0, 0))
    a = OnnxRuntimeModel(MODEL_PATH, 1).residual(planes, 0.5)
    b = OpenCvDnnModel(MODEL_PATH, 1).residual(planes, 0.5)
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_compression_strength_follows_quality():
    strengths = [compression_strength(q) for q in (10, 20, 40, 75, 95)]
    assert strengths == sorted(strengths, reverse=True)
    assert compression_strength(None) == 0.0 and compression_strength(100) == 0.0
    flat = np.zeros((64, 64), np.uint8)
    assert input_strength(flat, CLEAN_FROM_QUALITY) == 0.0
    assert input_strength(flat, 50) == pytest.approx(1.0)


def test_blockiness_detects_jpeg_and_estimates_strength_without_tables():
    photo = _photo_crop()
    clean = luma(photo)
    blocky = luma(pixels(encode(photo, "JPEG", quality=15)))
    assert blockiness(clean) < 1.15
    assert blockiness(blocky) > 1.5
    assert input_strength(clean, None) == 0.0
    assert input_strength(blocky, None) > 1.0  # e.g. a JPEG re-saved as PNG


@pytest.mark.parametrize("path", PATHS)
def test_deblocking_lowers_blockiness_at_same_size(path):
    data = encode(_photo_crop(), "JPEG", quality=15)
    before = blockiness(luma(pixels(data)))
    after = blockiness(luma(_restore(data, None, 5, PATHS[path])))
    assert after < 1.0 + 0.6 * (before - 1.0)


@pytest.mark.parametrize("path", PATHS)
def test_deblocking_lowers_blockiness_when_upscaling(path):
    small = np.asarray(Image.fromarray(_photo_crop()).resize((96, 96), Image.Resampling.BICUBIC))
    data = encode(small, "JPEG", quality=20)
    bicubic = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").resize((192, 192), Image.Resampling.BICUBIC)
    )
    restored = _restore(data, (192, 192), 5, PATHS[path])
    assert blockiness(luma(restored)) < blockiness(luma(bicubic))


@pytest.mark.parametrize(
    ("name", "quality", "min_gain_db"), [("skimage:chelsea.png", None, 0.5), ("skimage:coffee.png", 30, 0.2)]
)
def test_model_beats_bicubic_on_held_out_photos(name, quality, min_gain_db):
    # Held-out photos: never trained on. Thresholds well under the benchmark's averages
    # (docs/benchmarks/engine.md) so only a real regression fails.
    box = {"skimage:chelsea.png": (100, 40, 292, 232), "skimage:coffee.png": (200, 60, 392, 252)}[name]
    original = _photo_crop(name, box)
    small = np.asarray(Image.fromarray(original).resize((96, 96), Image.Resampling.BICUBIC))
    data = encode(small, "JPEG", quality=quality) if quality else encode(small, "PNG")
    bicubic = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").resize((192, 192), Image.Resampling.BICUBIC)
    )
    restored = _restore(data, (192, 192), 5, MODEL)
    assert _psnr(original, restored) > _psnr(original, bicubic) + min_gain_db


@pytest.mark.parametrize("path", PATHS)
def test_levels_are_monotonic(path):
    small = np.asarray(Image.fromarray(_photo_crop()).resize((96, 96), Image.Resampling.BICUBIC))
    data = encode(small, "JPEG", quality=30)
    outputs = [luma(_restore(data, (192, 192), level, PATHS[path])).astype(float) for level in range(1, 11)]
    change = [np.abs(out - outputs[0]).mean() for out in outputs]
    assert all(b > a for a, b in itertools.pairwise(change)), change
    blocks = [blockiness(out.astype(np.uint8)) for out in outputs[:6]]
    assert all(b <= a + 0.01 for a, b in itertools.pairwise(blocks)), blocks


def test_level_1_stays_close_to_the_input():
    small = np.asarray(Image.fromarray(_photo_crop()).resize((96, 96), Image.Resampling.BICUBIC))
    data = encode(small, "JPEG", quality=30)
    bicubic = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").resize((192, 192), Image.Resampling.BICUBIC)
    )
    level_1 = _restore(data, (192, 192), 1, MODEL)
    level_10 = _restore(data, (192, 192), 10, MODEL)
    gap_1 = np.abs(luma(level_1).astype(float) - luma(bicubic)).mean()
    gap_10 = np.abs(luma(level_10).astype(float) - luma(bicubic)).mean()
    assert gap_1 < 1.5 and gap_1 < gap_10 / 3


def test_level_table_is_monotonic():
    settings = [level_settings(level) for level in range(1, 11)]
    for field in ("blend", "extra_strength", "sharpen"):
        values = [getattr(s, field) for s in settings]
        assert values == sorted(values)
    assert settings[4].blend == 1.0 and settings[4].sharpen == 0.0  # level 5 is the model as trained
    with pytest.raises(ValueError):
        level_settings(11)


@pytest.mark.parametrize("path", PATHS)
def test_clean_input_at_same_size_is_not_resampled(path):
    image = scene(120, 90)
    out = _restore(encode(image, "PNG"), None, 5, PATHS[path])
    assert np.abs(out.astype(int) - image).max() <= 1  # only the Y'CbCr round trip


@pytest.mark.parametrize(
    ("size", "expected"), [((300, 225), (300, 225)), ((500, None), (500, 375)), ((40, 30), (40, 30))]
)
def test_other_factors(size, expected):
    data = encode(scene(120, 90), "JPEG", quality=40)
    out = _restore(data, size, 5, MODEL)
    assert out.shape == (expected[1], expected[0], 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_block_grid_follows_exif_orientation(orientation):
    # 101x75: sides that are not multiples of 8, so mirrored axes move the grid.
    stored = np.asarray(Image.fromarray(_photo_crop()).resize((101, 75)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode(encode(stored, "JPEG", quality=15, exif=exif.tobytes()), max_pixels=10**6)
    assert decoded.block_grid == detect_block_grid(luma(decoded.rgb))


def test_model_planes_mark_block_boundaries():
    planes = model_planes(np.zeros((16, 20), np.float32), (3, 0))
    assert list(np.flatnonzero(planes[1, 0])) == [2, 3, 10, 11, 18, 19]
    assert list(np.flatnonzero(planes[2, :, 0])) == [0, 7, 8, 15]
    assert not model_planes(np.zeros((16, 20), np.float32), None)[1:].any()
    # A tile further down the image keeps the image's grid.
    tile = model_planes(np.zeros((8, 20), np.float32), (3, 0), top=5)
    assert list(np.flatnonzero(tile[2, :, 0])) == [2, 3]
