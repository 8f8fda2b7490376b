"""The image enhancement engine: pure functions, encoded bytes + operation in, bytes + metadata out.

No HTTP, no global state. See ``docs/engine.md`` for what each preset, level and intensity does.

The public names load their modules (numpy, OpenCV, onnxruntime) on first use, so that the light modules
here (``model_spec``, ``restoration_spec``) can be imported by the server's configuration and the
training environment without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leapi_server.engine.codec import sniff_format
    from leapi_server.engine.geometry import fit_box
    from leapi_server.engine.pipeline import enhance
    from leapi_server.engine.types import EngineError, EnhancedImage, ImageInfo

__all__ = ["EngineError", "EnhancedImage", "ImageInfo", "enhance", "fit_box", "sniff_format"]

_HOMES = {
    "EngineError": "types",
    "EnhancedImage": "types",
    "ImageInfo": "types",
    "enhance": "pipeline",
    "fit_box": "geometry",
    "sniff_format": "codec",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
