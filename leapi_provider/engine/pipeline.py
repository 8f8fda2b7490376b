"""``enhance``: bytes + operation in, bytes + metadata out."""

from __future__ import annotations

from leapi_provider.engine import codec
from leapi_provider.engine.geometry import fit_box, resize
from leapi_provider.engine.presets import recipe_for
from leapi_provider.engine.types import EngineError, EnhancedImage, ImageInfo
from leapi_provider.models import PresetOperation

DEFAULT_MAX_INPUT_PIXELS = 100_000_000
#: An output this large needs several GB of working memory; beyond it the request fails its image.
DEFAULT_MAX_OUTPUT_PIXELS = 150_000_000


def enhance(
    data: bytes,
    operation: PresetOperation,
    *,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
) -> EnhancedImage:
    """Enhance one encoded image with one preset operation.

    :param data: the input file (JPEG, PNG, TIFF, BMP or WEBP).
    :param operation: the preset and its fields; fields left ``None`` take the preset's defaults.
    :param max_input_pixels: inputs with more pixels are refused from their header, before decoding.
    :param max_output_pixels: requested outputs with more pixels are refused before any work.
    :raises EngineError: the image is unusable (corrupt, unsupported, too large); message user-facing.
    """
    recipe = recipe_for(operation)
    decoded = codec.decode(data, max_pixels=max_input_pixels)
    in_w, in_h = decoded.info.width, decoded.info.height
    out_w, out_h = fit_box(in_w, in_h, operation.width, operation.height)
    if out_w * out_h > max_output_pixels:
        raise EngineError(
            f"the requested output {out_w}x{out_h} = {out_w * out_h / 1e6:.1f} MP is over the limit of "
            f"{max_output_pixels / 1e6:.1f} MP"
        )
    rgb = resize(decoded.rgb, (out_w, out_h))
    alpha = None if decoded.alpha is None else resize(decoded.alpha[..., None], (out_w, out_h))
    if alpha is not None and alpha.ndim == 3:
        alpha = alpha[..., 0]
    data_out = codec.encode(
        rgb, alpha, image_format=recipe.image_format, quality=recipe.quality, dpi=recipe.dpi
    )
    mime, ext = recipe.image_format.mime, recipe.image_format.ext
    output = ImageInfo(
        format=recipe.image_format.value, mime=mime, ext=ext, width=out_w, height=out_h, interpret="srgb"
    )
    return EnhancedImage(data=data_out, input=decoded.info, output=output)
