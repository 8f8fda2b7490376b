"""Does int8 or fp16 inference pay on this CPU? Times the committed model in three forms with onnxruntime.

    .work/train/bin/python train/quantization_check.py      # needs onnx and onnxruntime (train/requirements.txt)

* fp32: the committed file;
* int8: static QDQ quantisation (onnxruntime.quantization, per-channel weights, activations calibrated on
  strips of training photographs, never held-out ones);
* fp16: weights and activations converted to float16 (onnxruntime's CPU provider runs what it has fp16
  kernels for and casts around the rest).

One thread, the 900x600 luma of the marketplace benchmark cut in the engine's strips (96 rows + 8 of
context each side), median of 7 runs; plus the PSNR of each form's output against fp32's, in dB.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.photos import TRAIN_PHOTOS, load_photo
from train.spec import restoration_spec

STRIP_ROWS = 96 + 2 * restoration_spec.RECEPTIVE_HALO
WIDTH = 900
STRENGTH = np.array([0.7], dtype=np.float32)  # about JPEG q75


def strips(name: str, count: int) -> list[np.ndarray]:
    import cv2

    photo = load_photo(name)
    grey = photo if photo.ndim == 2 else cv2.cvtColor(photo, cv2.COLOR_RGB2YCrCb)[..., 0]
    grey = cv2.resize(
        grey, (WIDTH, round(grey.shape[0] * WIDTH / grey.shape[1])), interpolation=cv2.INTER_AREA
    )
    rows = np.linspace(0, grey.shape[0] - STRIP_ROWS, count).astype(int)
    return [
        restoration_spec.model_planes(grey[r : r + STRIP_ROWS].astype(np.float32) / 255.0, (0, 0))[None]
        for r in rows
    ]


def session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(path: Path, inputs: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    model = session(path)
    feeds = [
        {restoration_spec.INPUT_PLANES: planes, restoration_spec.INPUT_STRENGTH: STRENGTH}
        for planes in inputs
    ]
    outputs = [model.run(None, feed)[0] for feed in feeds]  # warm-up, and the outputs
    times = []
    for _ in range(7):
        started = time.perf_counter()
        for feed in feeds:
            model.run(None, feed)
        times.append(time.perf_counter() - started)
    return statistics.median(times), outputs


def quantise_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calibration = [planes for name in TRAIN_PHOTOS[:6] for planes in strips(name, 2)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(
                {restoration_spec.INPUT_PLANES: p, restoration_spec.INPUT_STRENGTH: STRENGTH}
                for p in calibration
            )

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(
        str(source),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def convert_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnx import helper

    model = onnx.load(str(source))
    for initializer in model.graph.initializer:
        if initializer.data_type == onnx.TensorProto.FLOAT:
            array = onnx.numpy_helper.to_array(initializer).astype(np.float16)
            initializer.CopyFrom(onnx.numpy_helper.from_array(array, initializer.name))
    graph = model.graph
    # Inputs and output stay float32 (the engine's interface): cast at the edges.
    casts_in = []
    for graph_input in graph.input:
        cast_name = graph_input.name + "_fp16"
        casts_in.append(
            helper.make_node("Cast", [graph_input.name], [cast_name], to=onnx.TensorProto.FLOAT16)
        )
        for node in graph.node:
            node.input[:] = [cast_name if i == graph_input.name else i for i in node.input]
    output = graph.output[0]
    for node in graph.node:
        node.output[:] = [output.name + "_fp16" if o == output.name else o for o in node.output]
    cast_out = helper.make_node("Cast", [output.name + "_fp16"], [output.name], to=onnx.TensorProto.FLOAT)
    nodes = casts_in + list(graph.node) + [cast_out]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    onnx.save(model, str(target))


def main() -> int:
    inputs = strips("skimage:motorcycle_left.png", 6)  # 6 strips of 96 rows: ~the 900x600 luma
    with tempfile.TemporaryDirectory() as folder:
        int8, fp16 = Path(folder) / "int8.onnx", Path(folder) / "fp16.onnx"
        quantise_int8(restoration_spec.MODEL_PATH, int8)
        convert_fp16(restoration_spec.MODEL_PATH, fp16)
        base_time, base_out = run(restoration_spec.MODEL_PATH, inputs)
        print(f"fp32: {base_time * 1000:.0f} ms")
        for label, path in (("int8 (QDQ, static)", int8), ("fp16", fp16)):
            seconds, outputs = run(path, inputs)
            mse = np.mean([np.mean((a - b) ** 2) for a, b in zip(outputs, base_out, strict=True)])
            print(
                f"{label}: {seconds * 1000:.0f} ms ({base_time / seconds:.2f}x fp32's speed), output vs fp32: "
                f"{10 * np.log10(1.0 / max(mse, 1e-12)):.1f} dB PSNR"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
