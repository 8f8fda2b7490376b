"""A user's ONNX super-resolution model as the restoration stage (``--restoration-model``): what it must be,
how it runs (tiled, blended, through the whole engine) and how levels map onto it.

Every model is built by the test with the ``onnx`` package (``onnx_models``); the real one is the engine's
own trained luma model made into a one-input model.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from devkit import onnx_models
from leapi.models import MarketplacePreset
from leapi_server.engine import enhance
from leapi_server.engine.external import ExternalModel, ExternalModelError
from leapi_server.engine.model_spec import ExternalModelSpec
from leapi_server.engine.tiling import plan_axis
from tests.server.engine.images import encode, scene

#: Pure image functions: no server, so once, not once per server backend.
pytestmark = pytest.mark.own_backends

#: Light and tone off, PNG out: the restoration alone is compared.
RESTORE_ONLY = {"lightai_intensity": 0.0, "toneai_intensity": 0.0, "image_format": "PNG"}


def _decoded(data_bytes: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data_bytes)) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx-models")
    onnx_models.own_luma_x2(folder / "own_luma_x2.onnx")
    onnx_models.nearest_rgb_x4(folder / "nearest_x4_fixed.onnx", size=(64, 64))
    onnx_models.nearest_rgb_x4(folder / "nearest_x4_dynamic.onnx")
    return folder


def test_the_engines_own_model_as_a_users_model_gives_the_built_in_result(models: Path) -> None:
    """The same trained network, run whole-image inside the engine and tiled as a user's model, agrees:
    the tiles' seams and the in-graph bicubic leave at most a few levels of difference."""
    crop = data.astronaut()[:256, 128:384]
    photo = encode(crop, "PNG")
    operation = MarketplacePreset(width=512, restoration_level=5, **RESTORE_ONLY)
    model = ExternalModel(ExternalModelSpec(models / "own_luma_x2.onnx", scale=2, tile=96))
    assert (model.scale, model.channels) == (2, 1)
    built_in = _decoded(enhance(photo, operation).data)
    users = _decoded(enhance(photo, operation, model=model).data)
    difference = np.abs(built_in - users)[8:-8, 8:-8]  # the borders: mirrored padding vs the model's zeros
    assert difference.mean() < 0.5
    assert np.percentile(difference, 99.5) <= 2
    # And it is the model at work, not a plain upscale.
    bicubic = cv2.resize(crop, (512, 512), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    assert np.abs(users - bicubic)[8:-8, 8:-8].mean() > 3 * difference.mean()


@pytest.mark.parametrize("tile", [32, 64, 192])
def test_tiles_are_blended_without_seams(models: Path, tile: int) -> None:
    """Whatever the tile size, the interior matches a single whole-image run within 3 levels (the model's
    8-pixel receptive field meets the tiles' 8-16 pixel overlaps, cross-faded)."""
    luma = data.camera()[100:356, 100:356]
    whole = ExternalModel(ExternalModelSpec(models / "own_luma_x2.onnx", scale=2, tile=256)).upscale(luma)
    tiled = ExternalModel(ExternalModelSpec(models / "own_luma_x2.onnx", scale=2, tile=tile)).upscale(luma)
    difference = np.abs(whole.astype(np.int16) - tiled)[16:-16, 16:-16]
    assert difference.max() <= (6 if tile == 32 else 3)
    assert difference.mean() < 0.1


@pytest.mark.parametrize(
    ("name", "declared"), [("nearest_x4_fixed.onnx", None), ("nearest_x4_dynamic.onnx", 4)]
)
def test_an_rgb_x4_model_runs_exactly_whatever_the_image_size(
    models: Path, name: str, declared: int | None
) -> None:
    """A model that copies each pixel into its 4x4 block: the tiled, blended output is exactly that, on an
    image whose sides are multiples of neither the tile nor 16 (the fixed one takes only 64x64 tiles)."""
    model = ExternalModel(ExternalModelSpec(models / name, scale=declared))
    assert (model.scale, model.channels) == (4, 3)
    image = scene(203, 150)
    expected = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)
    assert np.array_equal(model.upscale(image), expected)


def test_an_rgb_model_goes_through_the_whole_engine(models: Path) -> None:
    model = ExternalModel(ExternalModelSpec(models / "nearest_x4_fixed.onnx"))
    image = scene(120, 90)
    out = _decoded(
        enhance(
            encode(image, "PNG"),
            MarketplacePreset(width=480, restoration_level=5, **RESTORE_ONLY),
            model=model,
        ).data
    )
    assert np.array_equal(out, np.repeat(np.repeat(image, 4, axis=0), 4, axis=1))
    # x2 asked of a x4 model: one pass, then a high-quality downscale to the requested size.
    half = enhance(
        encode(image, "PNG"), MarketplacePreset(width=240, restoration_level=5, **RESTORE_ONLY), model=model
    )
    assert (half.output.width, half.output.height) == (240, 180)


def test_levels_below_5_blend_the_model_with_bicubic(models: Path) -> None:
    """Level 5 is the model's own output; below it the model's weight is level/5 over the bicubic
    upscale (docs/engine.md), so the distance to bicubic grows with the level."""
    model = ExternalModel(ExternalModelSpec(models / "nearest_x4_fixed.onnx"))
    image = scene(96, 64)
    source = encode(image, "PNG")
    bicubic = cv2.resize(image, (384, 256), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    nearest = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1).astype(np.int16)
    distances = []
    for level in (1, 3, 5):
        operation = MarketplacePreset(width=384, restoration_level=level, **RESTORE_ONLY)
        out = _decoded(enhance(source, operation, model=model).data)
        expected = bicubic + level / 5 * (nearest - bicubic)
        assert np.abs(out - expected).max() <= 1
        distances.append(float(np.abs(out - bicubic).mean()))
    assert distances[0] < distances[1] < distances[2]


def test_tile_planning_covers_every_pixel_with_tiles_of_one_side() -> None:
    for length in (1, 15, 16, 100, 192, 193, 500, 1234):
        axis = plan_axis(length, max_side=192)
        assert axis.side % 16 == 0 and axis.side <= 192
        assert axis.starts[0] == 0 and axis.starts[-1] + axis.side >= length
        steps = np.diff(axis.starts)
        assert (steps == axis.side - axis.overlap).all()
        assert axis.overlap * 4 <= axis.side  # no pixel is in three tiles
    assert plan_axis(100, max_side=64, fixed=True).side == 64


Builder = Callable[[Path], Path]

REFUSED: list[tuple[str, Builder, dict[str, object], str]] = [
    ("not a model", lambda p: p.write_bytes(b"not an ONNX graph") and p, {}, r"not an ONNX model"),
    ("missing", lambda p: p, {}, r"no such file"),
    ("two inputs", onnx_models.two_inputs, {}, r"2 input\(s\) \(image, gain\)"),
    ("4 channels", lambda p: onnx_models.nearest_rgb_x4(p, size=(32, 32), channels=4), {}, r"4 channels"),
    (
        "3 channels in, 1 out",
        lambda p: onnx_models.nearest_rgb_x4(p, size=(32, 32), out_channels=1),
        {},
        r"input has 3 channels but its output 1",
    ),
    (
        "declared luma, takes RGB",
        lambda p: onnx_models.nearest_rgb_x4(p, size=(32, 32)),
        {"channels": "y"},
        r"3 channel\(s\) but --restoration-model-channels y",
    ),
    ("dynamic, no scale", onnx_models.nearest_rgb_x4, {}, r"--restoration-model-scale"),
    (
        "declared x2, is x4",
        lambda p: onnx_models.nearest_rgb_x4(p, size=(32, 32)),
        {"scale": 2},
        r"shapes say x4 but --restoration-model-scale says x2",
    ),
    ("x1.5", onnx_models.non_integer_scale, {}, r"not one integer scale"),
    ("declared x4, is x2", onnx_models.fixed_reshape, {"scale": 4}, r"does not run|not the"),
    ("fails on a real tile", onnx_models.fixed_reshape, {"scale": 2}, r"does not run on a 1x3x192x192 tile"),
]


@pytest.mark.parametrize(("case", "build", "declared", "message"), REFUSED, ids=[case[0] for case in REFUSED])
def test_unusable_models_are_refused_with_a_reason(
    tmp_path: Path, case: str, build: Builder, declared: dict[str, object], message: str
) -> None:
    path = tmp_path / "model.onnx"
    build(path)
    with pytest.raises(ExternalModelError, match=message):
        ExternalModel(ExternalModelSpec(path, **declared))  # type: ignore[arg-type]


def test_the_built_in_models_own_file_is_refused_it_has_two_inputs() -> None:
    from leapi_server.engine.restoration_spec import MODEL_PATH

    with pytest.raises(ExternalModelError, match=r"2 input\(s\) \(planes, strength\)"):
        ExternalModel(ExternalModelSpec(MODEL_PATH))
