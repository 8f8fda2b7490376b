"""ONNX super-resolution models built here with the ``onnx`` package, for ``--restoration-model`` tests
and the engine benchmark (nothing is downloaded).

* :func:`own_luma_x2`: the engine's own trained model (``weights/luma_x2.onnx``) made into a plain
  one-input super-resolution model: luma in, luma x2 out (the residual added to a bicubic upscale inside
  the graph), its height and width dynamic.
* :func:`nearest_rgb_x4`: a convolution and DepthToSpace whose weights copy each pixel into its 4x4 block:
  an exactly predictable RGB x4 model (static or dynamic shapes).
* :func:`srvgg_compact`: Real-ESRGAN's compact architecture (SRVGGNetCompact: convolutions and PReLU at
  the low resolution, pixel shuffle, nearest-upsampled skip) with random weights, for speed and memory.
* :func:`two_inputs`, :func:`fixed_reshape`, :func:`non_integer_scale`: models the server must refuse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from leapi_server.engine.restoration_spec import INPUT_PLANES, INPUT_STRENGTH, MODEL_PATH, OUTPUT_RESIDUAL

OPSET = 17
FLOAT = TensorProto.FLOAT


def _shape(batch: int | str, channels: int | str, height: int | str, width: int | str) -> list[int | str]:
    return [batch, channels, height, width]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def own_luma_x2(path: Path, *, strength: float = 0.0) -> Path:
    """The committed luma model as a one-input model: ``y`` [1, 1, h, w] -> [1, 1, 2h, 2w] (dynamic sides).

    Its two extra inputs become constants: no JPEG block grid (zero planes) and ``strength`` (0: clean).
    """
    trained = onnx.load(str(MODEL_PATH))
    graph = trained.graph
    nodes = [
        helper.make_node("Mul", ["y", "zero"], ["no_grid"]),
        helper.make_node("Concat", ["y", "no_grid", "no_grid"], [INPUT_PLANES], axis=1),
        *graph.node,
        helper.make_node(
            "Resize",
            ["y", "", "upscale"],
            ["bicubic"],
            mode="cubic",
            cubic_coeff_a=-0.75,
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Add", ["bicubic", OUTPUT_RESIDUAL], ["y_x2"]),
    ]
    initializers = [
        *graph.initializer,
        numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array([strength], dtype=np.float32), INPUT_STRENGTH),
        numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "upscale"),
    ]
    wrapped = helper.make_graph(
        nodes,
        "own_luma_x2",
        [helper.make_tensor_value_info("y", FLOAT, _shape(1, 1, "h", "w"))],
        [helper.make_tensor_value_info("y_x2", FLOAT, _shape(1, 1, "h2", "w2"))],
        initializers,
    )
    return _save(_model(wrapped), path)


def nearest_rgb_x4(
    path: Path, *, size: tuple[int, int] | None = None, channels: int = 3, out_channels: int | None = None
) -> Path:
    """A x4 model that copies each input pixel into its 4x4 output block (nearest neighbour).

    :param size: a fixed input (height, width); ``None``: dynamic height and width.
    :param channels: input channels (3 RGB, 1 luma; anything else to test a refusal).
    :param out_channels: output channels, when they should differ from the input's (a refusal).
    """
    scale = 4
    made = channels if out_channels is None else out_channels
    weights = np.zeros((made * scale * scale, channels, 1, 1), dtype=np.float32)
    for c in range(made):
        weights[c * scale * scale : (c + 1) * scale * scale, c % channels] = 1.0
    height, width = size or ("h", "w")
    out_h, out_w = (height * scale, width * scale) if size else ("h4", "w4")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "copy"], ["copies"], kernel_shape=[1, 1]),
            helper.make_node("DepthToSpace", ["copies"], ["image_x4"], blocksize=scale, mode="CRD"),
        ],
        "nearest_rgb_x4",
        [helper.make_tensor_value_info("image", FLOAT, _shape(1, channels, height, width))],
        [helper.make_tensor_value_info("image_x4", FLOAT, _shape(1, made, out_h, out_w))],
        [numpy_helper.from_array(weights, "copy")],
    )
    return _save(_model(graph), path)


def srvgg_compact(
    path: Path, *, features: int = 64, convolutions: int = 16, scale: int = 4, seed: int = 0
) -> Path:
    """Real-ESRGAN's SRVGGNetCompact (``realesr-animevideov3``: 64 features, 16 convolutions, x4;
    ``realesr-general-x4v3``: 32 convolutions), random weights, dynamic height and width."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    previous, width_in = "image", 3
    for index in range(convolutions + 1):
        weight = rng.normal(0, np.sqrt(2 / (9 * width_in)) * 0.5, (features, width_in, 3, 3)).astype(
            np.float32
        )
        initializers += [
            numpy_helper.from_array(weight, f"w{index}"),
            numpy_helper.from_array(np.zeros(features, dtype=np.float32), f"b{index}"),
            numpy_helper.from_array(np.full((features, 1, 1), 0.25, dtype=np.float32), f"slope{index}"),
        ]
        nodes += [
            helper.make_node("Conv", [previous, f"w{index}", f"b{index}"], [f"c{index}"], pads=[1, 1, 1, 1]),
            helper.make_node("PRelu", [f"c{index}", f"slope{index}"], [f"a{index}"]),
        ]
        previous, width_in = f"a{index}", features
    last = rng.normal(0, 0.01, (3 * scale * scale, features, 3, 3)).astype(np.float32)
    initializers += [
        numpy_helper.from_array(last, "w_out"),
        numpy_helper.from_array(np.zeros(3 * scale * scale, dtype=np.float32), "b_out"),
        numpy_helper.from_array(np.array([1, 1, scale, scale], dtype=np.float32), "nearest"),
    ]
    nodes += [
        helper.make_node("Conv", [previous, "w_out", "b_out"], ["shuffled"], pads=[1, 1, 1, 1]),
        helper.make_node("DepthToSpace", ["shuffled"], ["detail"], blocksize=scale, mode="CRD"),
        helper.make_node("Resize", ["image", "", "nearest"], ["base"], mode="nearest"),
        helper.make_node("Add", ["base", "detail"], ["image_up"]),
    ]
    graph = helper.make_graph(
        nodes,
        "srvgg_compact",
        [helper.make_tensor_value_info("image", FLOAT, _shape(1, 3, "h", "w"))],
        [helper.make_tensor_value_info("image_up", FLOAT, _shape(1, 3, "hs", "ws"))],
        initializers,
    )
    return _save(_model(graph), path)


def two_inputs(path: Path) -> Path:
    """An image plus a second input (like the built-in model's ``strength``): not one-input."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "gain"], ["scaled"]),
         helper.make_node("DepthToSpace", ["scaled"], ["image_x2"], blocksize=2, mode="CRD")],
        "two_inputs",
        [helper.make_tensor_value_info("image", FLOAT, _shape(1, 12, 8, 8)),
         helper.make_tensor_value_info("gain", FLOAT, [1])],
        [helper.make_tensor_value_info("image_x2", FLOAT, _shape(1, 3, 16, 16))],
    )  # fmt: skip
    return _save(_model(graph), path)


def fixed_reshape(path: Path, *, side: int = 16) -> Path:
    """Dynamic shapes on paper, but a Reshape that only works for ``side`` x ``side`` inputs: it runs on a
    small image and fails on a real tile (the server must find out at start)."""
    scale = 2
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["image", "fixed"], ["flat"]),
            helper.make_node("Reshape", ["flat", "back"], ["image_again"]),
            helper.make_node("Resize", ["image_again", "", "twice"], ["image_x2"], mode="nearest"),
        ],
        "fixed_reshape",
        [helper.make_tensor_value_info("image", FLOAT, _shape(1, 3, "h", "w"))],
        [helper.make_tensor_value_info("image_x2", FLOAT, _shape(1, 3, "h2", "w2"))],
        [
            numpy_helper.from_array(np.array([1, 3 * side * side], dtype=np.int64), "fixed"),
            numpy_helper.from_array(np.array([1, 3, side, side], dtype=np.int64), "back"),
            numpy_helper.from_array(np.array([1, 1, scale, scale], dtype=np.float32), "twice"),
        ],
    )
    return _save(_model(graph), path)


def non_integer_scale(path: Path) -> Path:
    """A fixed 32x32 -> 48x48 (x1.5) model."""
    graph = helper.make_graph(
        [helper.make_node("Resize", ["image", "", "", "size"], ["image_up"], mode="linear")],
        "x1_5",
        [helper.make_tensor_value_info("image", FLOAT, _shape(1, 3, 32, 32))],
        [helper.make_tensor_value_info("image_up", FLOAT, _shape(1, 3, 48, 48))],
        [numpy_helper.from_array(np.array([1, 3, 48, 48], dtype=np.int64), "size")],
    )
    return _save(_model(graph), path)
