"""Export a PyTorch super-resolution model to ONNX for ``leapi-server --restoration-model``.

Runs in the training environment (``make train`` creates ``.work/train``; PyTorch is never a dependency of
the server or in ``uv.lock``)::

    # any architecture spandrel reads (Real-ESRGAN and its compact models, SPAN, SwinIR, ...):
    .work/train/bin/pip install spandrel
    .work/train/bin/python train/export_onnx.py realesr-general-x4v3.pth --out realesr-x4.onnx

    # or Real-ESRGAN's compact architecture with random weights (speed and memory checks only):
    .work/train/bin/python train/export_onnx.py --random-srvgg --convolutions 32 --out srvgg-x4.onnx

The file has one input ``image`` and one output ``upscaled``, float32 N x C x H x W in [0, 1], height and
width dynamic: start the server with ``--restoration-model FILE --restoration-model-scale S``. The export
is checked against PyTorch with onnxruntime before the command says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

#: ONNX operator set: DepthToSpace, Resize and PRelu as onnxruntime runs them fast on the CPU.
OPSET = 17


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact network (Wang et al., BSD-3-Clause): 3x3 convolutions and PReLU at the input
    resolution, a pixel shuffle, plus the nearest-neighbour upscale of the input.

    ``realesr-animevideov3`` is 64 features x 16 convolutions, ``realesr-general-x4v3`` 64 x 32, both x4.
    """

    def __init__(
        self, *, channels: int = 3, features: int = 64, convolutions: int = 16, scale: int = 4
    ) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, 1, 1), nn.PReLU(features)]
        for _ in range(convolutions):
            layers += [nn.Conv2d(features, features, 3, 1, 1), nn.PReLU(features)]
        layers.append(nn.Conv2d(features, channels * scale * scale, 3, 1, 1))
        self.body = nn.Sequential(*layers)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        base = functional.interpolate(image, scale_factor=self.scale, mode="nearest")
        return self.shuffle(self.body(image)) + base


def load_with_spandrel(path: Path) -> tuple[nn.Module, int, int]:
    """A checkpoint of any architecture spandrel knows: (model, scale, input channels)."""
    try:
        from spandrel import ModelLoader
    except ImportError:
        sys.exit("reading a .pth needs spandrel: .work/train/bin/pip install spandrel")
    descriptor = ModelLoader().load_from_file(str(path))
    return descriptor.model, int(descriptor.scale), int(descriptor.input_channels)


def export(model: nn.Module, out: Path, *, channels: int, scale: int) -> None:
    """Write ``out`` with dynamic height and width, then check it against PyTorch with onnxruntime."""
    model = model.eval().float()
    sample = torch.rand(1, channels, 64, 64)
    dynamic = {"image": {2: "height", 3: "width"}, "upscaled": {2: "out_height", 3: "out_width"}}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (sample,),
            str(out),
            input_names=["image"],
            output_names=["upscaled"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: dynamic_axes as written, no extra dependencies
        )
    check(model, out, channels=channels, scale=scale)


def check(model: nn.Module, out: Path, *, channels: int, scale: int) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probe = torch.rand(1, channels, 40, 56)  # another size than the export's: the shapes are dynamic
    with torch.no_grad():
        expected = model(probe).numpy()
    got = session.run(None, {"image": probe.numpy()})[0]
    if got.shape != (1, channels, 40 * scale, 56 * scale):
        sys.exit(f"the exported model answers {got.shape} for 1x{channels}x40x56")
    error = float(np.abs(got - expected).max())
    if error > 1e-3:
        sys.exit(f"the exported model differs from PyTorch by {error:.2g}")
    kind = "rgb" if channels == 3 else "y"
    print(
        f"wrote {out} (x{scale}, {kind}, largest difference from PyTorch {error:.1e}); run it with:\n"
        f"  leapi-server --restoration-model {out} --restoration-model-scale {scale} "
        f"--restoration-model-channels {kind}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, help="a .pth/.safetensors file spandrel reads")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--random-srvgg", action="store_true", help="SRVGGNetCompact with random weights")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--convolutions", type=int, default=16)
    parser.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.random_srvgg == (args.checkpoint is not None):
        parser.error("give a checkpoint or --random-srvgg (not both)")
    if args.random_srvgg:
        torch.manual_seed(args.seed)
        model: nn.Module = SRVGGNetCompact(
            features=args.features, convolutions=args.convolutions, scale=args.scale
        )
        scale, channels = args.scale, 3
    else:
        model, scale, channels = load_with_spandrel(args.checkpoint)
    export(model, args.out, channels=channels, scale=scale)


if __name__ == "__main__":
    main()
