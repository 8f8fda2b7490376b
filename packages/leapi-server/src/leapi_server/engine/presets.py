"""The presets, as recipes: which stages run with which tuning, and the defaults of omitted fields.

Every preset runs the same stages in the same order (``pipeline.enhance``):

    decode -> restore (luma model, chroma resample) -> light -> tone -> finish sharpening -> encode

and differs in tuning. Defaults for fields a request leaves out follow the docs' sample body of that
preset (restoration level and intensities); quality is 85 (90 for print, which then keeps full-resolution
chroma), DPI 300 for print, format JPEG.
"""

from __future__ import annotations

from dataclasses import dataclass

from leapi.models import ImageFormat, PresetOperation, PrintPreset
from leapi_server.engine.light import LightTuning
from leapi_server.engine.tone import ToneTuning

DEFAULT_IMAGE_FORMAT = ImageFormat.JPEG
DEFAULT_PRINT_DPI = 300


@dataclass(frozen=True)
class Preset:
    # Defaults of fields the request leaves out.
    restoration_level: int
    lightai_intensity: float
    toneai_intensity: float
    quality: int
    # Stage tuning.
    light: LightTuning
    tone: ToneTuning
    #: Unsharp-mask amount on the final luma on top of the level's own (print output sharpening).
    finish_sharpen: float = 0.0
    #: Embed an sRGB ICC profile in the output (print workflows colour-manage; the web assumes sRGB).
    embed_srgb_profile: bool = False


PRESETS: dict[str, Preset] = {
    # Clean product look: neutral colours, bright clean background, crisp but not contrasty; never
    # darkens (product shots on white have a high mean by design).
    "preset/marketplace": Preset(
        restoration_level=4,
        lightai_intensity=1.0,
        toneai_intensity=0.5,
        quality=85,
        light=LightTuning(max_brighten_ev=1.6),
        tone=ToneTuning(shadows=0.3, highlights=0.1, clahe_clip=1.4),
    ),
    # Interiors: open up the shadows, straight (neutral) colours even under warm tungsten light.
    "preset/realestate": Preset(
        restoration_level=4,
        lightai_intensity=1.0,
        toneai_intensity=0.5,
        quality=85,
        light=LightTuning(max_cast=0.9, max_brighten_ev=2.0),
        tone=ToneTuning(shadows=0.9, highlights=0.4, clahe_clip=1.8),
    ),
    # Print: detail first (output sharpening for the paper's softening), faithful tones, tagged sRGB.
    "preset/print": Preset(
        restoration_level=2,
        lightai_intensity=1.0,
        toneai_intensity=0.5,
        quality=90,
        light=LightTuning(max_brighten_ev=1.0),
        tone=ToneTuning(shadows=0.4, highlights=0.3, clahe_clip=1.3),
        finish_sharpen=0.35,
        embed_srgb_profile=True,
    ),
}


@dataclass(frozen=True)
class Recipe:
    """An operation with every default filled in, and its preset's tuning."""

    op: str
    preset: Preset
    restoration_level: int
    lightai_intensity: float
    toneai_intensity: float
    image_format: ImageFormat
    quality: int
    dpi: int | None


def recipe_for(operation: PresetOperation) -> Recipe:
    preset = PRESETS[operation.op]

    def pick(value, default):
        return default if value is None else value

    dpi = None
    if isinstance(operation, PrintPreset):
        dpi = pick(operation.dpi, DEFAULT_PRINT_DPI)
    return Recipe(
        op=operation.op,
        preset=preset,
        restoration_level=pick(operation.restoration_level, preset.restoration_level),
        lightai_intensity=pick(operation.lightai_intensity, preset.lightai_intensity),
        toneai_intensity=pick(operation.toneai_intensity, preset.toneai_intensity),
        image_format=pick(operation.image_format, DEFAULT_IMAGE_FORMAT),
        quality=pick(operation.quality, preset.quality),
        dpi=dpi,
    )
