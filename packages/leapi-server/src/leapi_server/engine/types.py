"""Value types of the engine's public interface."""

from __future__ import annotations

from dataclasses import dataclass


class EngineError(Exception):
    """The image itself is unusable (corrupt, unsupported, too large).

    It fails that image's own result, never the batch. The message is shown to the user as is.
    """


@dataclass(frozen=True)
class ImageInfo:
    """What an input or output image is, in the terms of the LEAPI ``input_object`` / ``output_object``.

    ``interpret`` uses libvips' interpretation names (the docs' example says ``"srgb"``): ``"srgb"``,
    ``"b-w"``, ``"cmyk"``, ``"rgb16"``, ``"grey16"``.
    """

    format: str
    mime: str
    ext: str
    width: int
    height: int
    interpret: str | None = None

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


@dataclass(frozen=True)
class EnhancedImage:
    """The encoded output and what was read and written."""

    data: bytes
    input: ImageInfo
    output: ImageInfo
