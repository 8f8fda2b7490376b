"""The startup check: ``leapi-server`` refuses to start when its engine cannot enhance an image.

A server whose engine is broken (a missing OpenCV, an unloadable model) would accept every pipeline,
charge its credits and fail every image; checking once before listening turns that into one clear
message at start.
"""

from __future__ import annotations

import importlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leapi_server.engine.model_spec import ExternalModelSpec

#: What the engine imports; checked by name first so that the message names the missing one.
ENGINE_MODULES = ("numpy", "cv2", "onnxruntime", "PIL.Image")
_INSTALL_HINT = "install leapi-server with its dependencies"
#: The test image and the box it is enhanced into: a x2 upscale, so the restoration model runs.
_PROBE_SIZE = (16, 12)
_PROBE_BOX = (32, 24)


class EngineUnavailableError(RuntimeError):
    """The engine cannot enhance images; the message names the cause and how to fix it."""


def check_engine(
    *, model_path: Path | None = None, restoration_model: ExternalModelSpec | None = None
) -> str:
    """Import the engine, load the restoration model and enhance a tiny image with it.

    :param model_path: the built-in ONNX model to check; default the one the engine ships and uses.
    :param restoration_model: a user's model (``--restoration-model``), checked instead of the built-in
        one: loaded, its shapes read, run on a whole tile of the size it will get, then used on the
        test image.
    :returns: what restores images, for the log.
    :raises EngineUnavailableError: any of it fails.
    """
    for name in ENGINE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise EngineUnavailableError(f"{exc} ({_INSTALL_HINT})") from exc
    try:
        from leapi_server.engine import enhance
        from leapi_server.engine.external import ExternalModel, ExternalModelError
    except ImportError as exc:
        raise EngineUnavailableError(f"{exc} ({_INSTALL_HINT})") from exc
    from leapi.models import MarketplacePreset

    model: object
    if restoration_model is not None:
        try:
            model = ExternalModel(restoration_model)
        except ExternalModelError as exc:
            raise EngineUnavailableError(f"--restoration-model {restoration_model.path}: {exc}") from exc
        kind = "RGB" if model.channels == 3 else "luma"
        described = (
            f"{restoration_model.path} (x{model.scale}, {kind}, tiles of {model.tile[0]}x{model.tile[1]})"
        )
    else:
        model = _builtin_model(model_path)
        described = "the built-in luma x2 model"
    try:
        result = enhance(
            _probe_jpeg(), MarketplacePreset(width=_PROBE_BOX[0], height=_PROBE_BOX[1]), model=model
        )
    except Exception as exc:
        raise EngineUnavailableError(
            f"the engine failed on a test image ({type(exc).__name__}: {exc})"
        ) from exc
    if (result.output.width, result.output.height) != _PROBE_BOX:
        raise EngineUnavailableError(
            f"the engine made a {result.output.width}x{result.output.height} image of a "
            f"{_PROBE_BOX[0]}x{_PROBE_BOX[1]} request"
        )
    return described


def _builtin_model(model_path: Path | None) -> object:
    """The built-in model's runtime, run once on a blank plane."""
    import numpy as np

    from leapi_server.engine.restoration import BACKENDS, DEFAULT_BACKEND
    from leapi_server.engine.restoration_spec import MODEL_PATH, SCALE, model_planes

    path = model_path or MODEL_PATH
    if not path.is_file():
        raise EngineUnavailableError(f"the restoration model {path} is missing (reinstall leapi-server)")
    try:
        model = BACKENDS[DEFAULT_BACKEND](path, 1)
        height, width = 8, 8
        residual = model.residual(model_planes(np.zeros((height, width), dtype=np.float32), None), 0.5)
    except Exception as exc:
        raise EngineUnavailableError(f"the restoration model {path} does not load or run: {exc}") from exc
    if residual.shape != (height * SCALE, width * SCALE) or not np.isfinite(residual).all():
        raise EngineUnavailableError(
            f"the restoration model {path} answers a {residual.shape} residual for an {height}x{width} input"
        )
    return model


def _probe_jpeg() -> bytes:
    """A small colour gradient, JPEG-encoded (the commonest input)."""
    import numpy as np
    from PIL import Image

    width, height = _PROBE_SIZE
    ramp_x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    ramp_y = np.linspace(255, 0, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    pixels = np.stack([ramp_x, ramp_y, (ramp_x + ramp_y) / 2], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()
