"""What a user's own restoration model (``leapi-server --restoration-model``) is declared with.

Standard library only: the server's configuration reads these before the engine (numpy, OpenCV,
onnxruntime) is imported. The model itself is loaded and run by ``engine.external``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: What a model's one input and output may hold, by name: RGB (3 channels) or luma, BT.601 Y' (1 channel).
CHANNELS = {"rgb": 3, "y": 1}
#: Upscaling factors a model may have.
SCALES = (2, 3, 4)
#: Input pixels per side of one tile: the default, and the range a user may choose from. The tile bounds
#: the model's working memory (a tile's activations, e.g. 64 channels x 192 x 192 float32 = 9.4 MB a layer).
DEFAULT_TILE = 192
TILE_RANGE = (32, 1024)


@dataclass(frozen=True)
class ExternalModelSpec:
    """A user's ONNX super-resolution model and what its shapes may leave unsaid.

    :param path: the ``.onnx`` file.
    :param scale: its upscaling factor; ``None``: read from its input and output shapes.
    :param channels: ``"rgb"`` or ``"y"``; ``None``: read from its input shape.
    :param tile: input pixels per side of the tiles it is run on (a model with a fixed input size uses
        that size instead).
    """

    path: Path
    scale: int | None = None
    channels: str | None = None
    tile: int = DEFAULT_TILE
