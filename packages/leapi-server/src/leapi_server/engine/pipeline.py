"""``enhance``: encoded bytes + preset operation in, encoded bytes + metadata out."""

from __future__ import annotations

import numpy as np

from leapi.models import PresetOperation
from leapi_server.engine import codec
from leapi_server.engine.color import luma as luma_of
from leapi_server.engine.color import rgb_to_ycrcb, ycrcb_to_rgb
from leapi_server.engine.geometry import fit_box, resize
from leapi_server.engine.light import apply_light
from leapi_server.engine.presets import Recipe, recipe_for
from leapi_server.engine.restoration import (
    RESTORE_BEFORE_DOWNSCALE_BELOW,
    Restorer,
    Upscaler,
    input_strength,
    load_model,
    restore_chroma,
    restore_luma,
    restore_rgb,
)
from leapi_server.engine.tone import apply_tone
from leapi_server.engine.types import EngineError, EnhancedImage, ImageInfo

DEFAULT_MAX_INPUT_PIXELS = 100_000_000
#: An output this large needs several GB of working memory; beyond it the request fails its image.
DEFAULT_MAX_OUTPUT_PIXELS = 150_000_000

_NO_MODEL = object()


def enhance(
    data: bytes,
    operation: PresetOperation,
    *,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
    model: Restorer | object = _NO_MODEL,
) -> EnhancedImage:
    """Enhance one encoded image with one preset operation.

    :param data: the input file (JPEG, PNG, TIFF, BMP or WEBP).
    :param operation: the preset and its fields; fields left ``None`` take the preset's defaults
        (``presets.PRESETS``).
    :param max_input_pixels: inputs with more pixels are refused from their header, before decoding.
    :param max_output_pixels: requested outputs with more pixels are refused before any work.
    :param model: the restoration model: default the built-in one (``restoration.load_model()``); a
        user's model (``external.load_external_model``); ``None`` forces the classical path.
    :raises EngineError: the image is unusable (corrupt, unsupported, too large); message user-facing.
    """
    recipe = recipe_for(operation)
    header = codec.probe(data, max_pixels=max_input_pixels)
    out_w, out_h = fit_box(header.width, header.height, operation.width, operation.height)
    if out_w * out_h > max_output_pixels:
        raise EngineError(
            f"the requested output {out_w}x{out_h} = {out_w * out_h / 1e6:.1f} MP is over the limit of "
            f"{max_output_pixels / 1e6:.1f} MP"
        )
    # A big reduction is not restored first (see RESTORE_BEFORE_DOWNSCALE_BELOW), so a JPEG may as well
    # be decoded at 1/2, 1/4 or 1/8 scale directly by libjpeg.
    reduction = min(header.width / out_w, header.height / out_h)
    draft = (out_w, out_h) if reduction >= RESTORE_BEFORE_DOWNSCALE_BELOW else None
    decoded = codec.decode(data, max_pixels=max_input_pixels, draft_size=draft)
    rgb, alpha = render(
        decoded,
        (out_w, out_h),
        recipe,
        model=load_model() if model is _NO_MODEL else model,  # type: ignore[arg-type]
    )
    encoded = codec.encode(
        rgb,
        alpha,
        image_format=recipe.image_format,
        quality=recipe.quality,
        dpi=recipe.dpi,
        icc_profile=codec.srgb_icc_profile() if recipe.preset.embed_srgb_profile else None,
    )
    output = ImageInfo(
        format=recipe.image_format.value,
        mime=recipe.image_format.mime,
        ext=recipe.image_format.ext,
        width=out_w,
        height=out_h,
        interpret="srgb",
    )
    return EnhancedImage(data=encoded, input=header, output=output)


def render(
    decoded: codec.DecodedImage, size: tuple[int, int], recipe: Recipe, *, model: Restorer
) -> tuple[np.ndarray, np.ndarray | None]:
    """The stages between decode and encode: sRGB uint8 pixels (and alpha) at ``size``."""
    if isinstance(model, Upscaler) and model.channels == 3:
        rgb = restore_rgb(
            decoded.rgb,
            size,
            level=recipe.restoration_level,
            strength=input_strength(luma_of(decoded.rgb), decoded.jpeg_quality),
            model=model,
            sharpen=recipe.preset.finish_sharpen,
        )
    else:
        rgb = _restore_ycrcb(decoded, size, recipe, model=model)
    # Measured on the input (cheaper, and restoration does not change global colour statistics).
    rgb = apply_light(
        rgb, intensity=recipe.lightai_intensity, tuning=recipe.preset.light, reference=decoded.rgb
    )
    rgb = apply_tone(rgb, intensity=recipe.toneai_intensity, tuning=recipe.preset.tone)
    alpha = None if decoded.alpha is None else resize(decoded.alpha, size)
    return rgb, alpha


def _restore_ycrcb(
    decoded: codec.DecodedImage, size: tuple[int, int], recipe: Recipe, *, model: Restorer
) -> np.ndarray:
    """Luma through the model (built-in, a user's luma model, or classical), chroma resampled."""
    ycrcb = rgb_to_ycrcb(decoded.rgb)
    luma = np.ascontiguousarray(ycrcb[..., 0])
    strength = input_strength(luma, decoded.jpeg_quality)
    restored = np.empty((size[1], size[0], 3), dtype=np.uint8)
    restored[..., 0] = restore_luma(
        luma,
        size,
        level=recipe.restoration_level,
        strength=strength,
        model=model,
        grid=decoded.block_grid,
        sharpen=recipe.preset.finish_sharpen,
    )
    restored[..., 1:] = restore_chroma(ycrcb[..., 1:], size, subsampled=decoded.chroma_subsampled)
    del ycrcb
    return ycrcb_to_rgb(restored)
