"""Bring your own model: any one-input, one-output ONNX super-resolution model as the restoration stage.

``leapi-server --restoration-model PATH.onnx`` replaces the built-in luma model with a user's model, e.g.
Real-ESRGAN's compact model or SPAN exported from PyTorch (``docs/engine.md`` says how). What it must be:

* one input and one output, ``N x C x H x W``, float32 (or float16) in [0, 1]: the layout and range of
  PyTorch image models;
* ``C`` = 3 (RGB, in that order) or 1 (luma, BT.601 Y'), the same in and out;
* an integer scale of 2, 3 or 4 (the output is ``scale`` times the input on both sides).

Scale and channels are read from the model's shapes; where the shapes are dynamic they must be declared
(``ExternalModelSpec``). :func:`load_external_model` checks all of it and runs the model once on a tile of
the size it will get, so that a server refuses to start (``engine_check``) rather than fail every image.

The model runs on overlapping tiles blended into each other (``engine.tiling``): working memory is a few
tiles, whatever the image size.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import cv2
import numpy as np

from leapi_server.engine.model_spec import CHANNELS, SCALES, TILE_RANGE, ExternalModelSpec
from leapi_server.engine.restoration import DEFAULT_THREADS, onnx_session
from leapi_server.engine.tiling import plan_axis, run_tiled

log = logging.getLogger(__name__)

_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class ExternalModelError(ValueError):
    """The file cannot serve as the restoration model; the message names the problem and the fix."""


@dataclass(frozen=True)
class ModelShape:
    """What a model takes and gives, from its shapes and the user's declarations."""

    scale: int
    channels: int
    #: The input size the model only accepts (height, width), or ``None`` for any size.
    fixed_size: tuple[int, int] | None


def _dimension(value: object) -> int | None:
    """A static dimension, or ``None`` for a dynamic one (a name, ``None`` or -1)."""
    return value if isinstance(value, int) and value > 0 else None


def read_shape(inputs: list, outputs: list, spec: ExternalModelSpec) -> ModelShape:
    """Scale, channels and fixed size from an onnxruntime session's inputs and outputs and ``spec``.

    :raises ExternalModelError: it is not a one-input, one-output image model of a supported kind, or its
        scale or channels can be found neither from its shapes nor from ``spec``.
    """
    if len(inputs) != 1 or len(outputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ExternalModelError(
            f"it has {len(inputs)} input(s) ({names}) and {len(outputs)} output(s); a super-resolution "
            "model takes one image and gives one image"
        )
    source, result = inputs[0], outputs[0]
    for role, arg in (("input", source), ("output", result)):
        if len(arg.shape) != 4:
            raise ExternalModelError(f"its {role} {arg.name!r} has shape {arg.shape}; expected N x C x H x W")
        if arg.type not in _FLOAT_TYPES:
            raise ExternalModelError(
                f"its {role} {arg.name!r} is {arg.type}; expected float32 or float16 pixels in [0, 1]"
            )
    channels = _channels(source.shape[1], result.shape[1], spec.channels)
    scale = _scale(source.shape[2:], result.shape[2:], spec.scale)
    height, width = (_dimension(d) for d in source.shape[2:])
    return ModelShape(
        scale=scale, channels=channels, fixed_size=(height, width) if height and width else None
    )


def _channels(input_channels: object, output_channels: object, declared: str | None) -> int:
    wanted = CHANNELS.get(declared) if declared else None
    if declared and wanted is None:
        raise ExternalModelError(f"channels {declared!r}: use one of {', '.join(CHANNELS)}")
    given, made = _dimension(input_channels), _dimension(output_channels)
    if given is not None and given not in CHANNELS.values():
        raise ExternalModelError(f"its input has {given} channels; expected 3 (RGB) or 1 (luma)")
    if given is not None and made is not None and given != made:
        raise ExternalModelError(f"its input has {given} channels but its output {made}; they must match")
    found = given or made
    if wanted is not None and found is not None and wanted != found:
        raise ExternalModelError(
            f"its input has {found} channel(s) but --restoration-model-channels {declared} means {wanted}"
        )
    if found is None and wanted is None:
        raise ExternalModelError(
            "its channel count is dynamic: declare it with --restoration-model-channels rgb|y"
        )
    return int(found or wanted)  # type: ignore[arg-type]


def _scale(input_size: list, output_size: list, declared: int | None) -> int:
    if declared is not None and declared not in SCALES:
        raise ExternalModelError(f"scale {declared}: use one of {', '.join(map(str, SCALES))}")
    sides = [(_dimension(i), _dimension(o)) for i, o in zip(input_size, output_size, strict=True)]
    ratios = {o / i for i, o in sides if i and o}
    if ratios:
        if len(ratios) > 1 or not float(next(iter(ratios))).is_integer():
            raise ExternalModelError(
                f"its input is {input_size} and its output {output_size} pixels: not one integer scale"
            )
        found = int(next(iter(ratios)))
        if found not in SCALES:
            raise ExternalModelError(
                f"its scale is x{found}; supported: {', '.join(f'x{s}' for s in SCALES)}"
            )
        if declared is not None and declared != found:
            raise ExternalModelError(
                f"its shapes say x{found} but --restoration-model-scale says x{declared}"
            )
        return found
    if declared is None:
        raise ExternalModelError(
            f"its scale cannot be read from its shapes (input {input_size}, output {output_size} are "
            "dynamic): declare it with --restoration-model-scale 2|3|4"
        )
    return declared


class ExternalModel:
    """A user's super-resolution model, checked and ready: :meth:`upscale` runs it tiled.

    :param spec: the model file and its declarations.
    :param threads: onnxruntime intra-op threads (the engine's per-worker share of the cores).
    :raises ExternalModelError: the file is not a usable model (the message says why).
    """

    def __init__(self, spec: ExternalModelSpec, threads: int = DEFAULT_THREADS) -> None:
        low, high = TILE_RANGE
        if not low <= spec.tile <= high:
            raise ExternalModelError(f"tile {spec.tile}: use {low}-{high} pixels")
        if not spec.path.is_file():
            raise ExternalModelError("no such file")
        try:
            self.session = onnx_session(spec.path, threads)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise ExternalModelError(f"not an ONNX model onnxruntime can load ({_first_line(exc)})") from exc
        source = self.session.get_inputs()[0] if self.session.get_inputs() else None
        self.shape = read_shape(self.session.get_inputs(), self.session.get_outputs(), spec)
        assert source is not None
        self.input_name = source.name
        self.input_type = _FLOAT_TYPES[source.type]
        self.path = spec.path
        self.scale = self.shape.scale
        self.channels = self.shape.channels
        self.tile = self.shape.fixed_size or (spec.tile, spec.tile)
        self._probe()

    def _probe(self) -> None:
        """Run one whole tile: the model must answer its scale and channels, with finite values."""
        height, width = self.tile
        ramp = np.linspace(0.0, 1.0, height * width * self.channels, dtype=np.float32)
        tile = ramp.reshape(height, width, self.channels)
        try:
            out = self.run(tile)
        except Exception as exc:
            raise ExternalModelError(
                f"it does not run on a 1x{self.channels}x{height}x{width} tile ({_first_line(exc)})"
            ) from exc
        expected = (height * self.scale, width * self.scale, self.channels)
        if out.shape != expected:
            got = "x".join(map(str, (out.shape[2], *out.shape[:2])))
            raise ExternalModelError(
                f"for a {self.channels}x{height}x{width} tile it answers {got}, not the "
                f"{self.channels}x{expected[0]}x{expected[1]} of x{self.scale} (check the scale and channels)"
            )
        if not np.isfinite(out).all():
            raise ExternalModelError("it answers non-finite values (NaN or infinity) for a test tile")

    def run(self, tile: np.ndarray) -> np.ndarray:
        """One tile: ``h x w x C`` float32 in [0, 1] -> ``h*scale x w*scale x C`` float32 (writable)."""
        feed = np.ascontiguousarray(tile.transpose(2, 0, 1)[None], dtype=self.input_type)
        out = self.session.run(None, {self.input_name: feed})[0]
        if out.ndim != 4 or out.shape[0] != 1:
            return np.empty((0, 0, 0), dtype=np.float32)  # a wrong shape: _probe names it
        return np.ascontiguousarray(out[0].transpose(1, 2, 0), dtype=np.float32)

    def upscale(self, image: np.ndarray, *, blend: float = 1.0) -> np.ndarray:
        """``image`` (``H x W`` luma or ``H x W x 3`` RGB, uint8) enlarged ``scale`` times by the model.

        :param blend: the weight of the model's output over the bicubic upscale (restoration levels 1-4).
        """
        flat = image.ndim == 2
        pixels = image[..., None] if flat else image
        height, width = pixels.shape[:2]
        out_size = (width * self.scale, height * self.scale)
        if blend < 1.0:
            out = cv2.resize(image, out_size, interpolation=cv2.INTER_CUBIC)
            out = out[..., None] if flat else out
        else:
            out = np.empty((out_size[1], out_size[0], pixels.shape[2]), dtype=np.uint8)

        def emit(rows: slice, cols: slice, values: np.ndarray) -> None:
            values *= 255.0
            if blend < 1.0:
                base = out[rows, cols].astype(np.float32)
                values = base + blend * (values - base)
            out[rows, cols] = np.clip(values + 0.5, 0, 255)

        fixed = self.shape.fixed_size is not None
        rows = plan_axis(height, max_side=self.tile[0], fixed=fixed)
        cols = plan_axis(width, max_side=self.tile[1], fixed=fixed)
        run_tiled(self.run, pixels, scale=self.scale, rows=rows, cols=cols, emit=emit)
        return out[..., 0] if flat else out


@functools.lru_cache(maxsize=2)
def load_external_model(spec: ExternalModelSpec, threads: int = DEFAULT_THREADS) -> ExternalModel:
    """The model of ``spec``, loaded and checked once per process (worker)."""
    model = ExternalModel(spec, threads)
    log.info(
        "restoration model %s: x%d, %s, tiles of %dx%d", spec.path, model.scale,
        "RGB" if model.channels == 3 else "luma", *model.tile,
    )  # fmt: skip
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
