"""The image enhancement engine: pure functions, encoded bytes + operation in, bytes + metadata out.

No HTTP, no global state. See ``docs/engine.md`` for what each preset, level and intensity does.
"""

from __future__ import annotations

from leapi_server.engine.codec import sniff_format
from leapi_server.engine.geometry import fit_box
from leapi_server.engine.pipeline import enhance
from leapi_server.engine.types import EngineError, EnhancedImage, ImageInfo

__all__ = ["EngineError", "EnhancedImage", "ImageInfo", "enhance", "fit_box", "sniff_format"]
