"""The presets, as recipes: which stages run, in which order, with which tuning.

Defaults for fields a request leaves out follow the docs' sample bodies for each preset.
"""

from __future__ import annotations

from dataclasses import dataclass

from leapi_provider.models import ImageFormat, PresetOperation, PrintPreset

DEFAULT_IMAGE_FORMAT = ImageFormat.JPEG
DEFAULT_PRINT_DPI = 300


@dataclass(frozen=True)
class PresetDefaults:
    restoration_level: int
    lightai_intensity: float
    toneai_intensity: float
    quality: int


PRESET_DEFAULTS: dict[str, PresetDefaults] = {
    "preset/marketplace": PresetDefaults(
        restoration_level=4, lightai_intensity=1.0, toneai_intensity=0.5, quality=85
    ),
    "preset/realestate": PresetDefaults(
        restoration_level=4, lightai_intensity=1.0, toneai_intensity=0.5, quality=85
    ),
    "preset/print": PresetDefaults(
        restoration_level=2, lightai_intensity=1.0, toneai_intensity=0.5, quality=90
    ),
}


@dataclass(frozen=True)
class Recipe:
    """An operation with every default filled in."""

    op: str
    restoration_level: int
    lightai_intensity: float
    toneai_intensity: float
    image_format: ImageFormat
    quality: int
    dpi: int | None


def recipe_for(operation: PresetOperation) -> Recipe:
    defaults = PRESET_DEFAULTS[operation.op]

    def pick(value, default):
        return default if value is None else value

    dpi = None
    if isinstance(operation, PrintPreset):
        dpi = pick(operation.dpi, DEFAULT_PRINT_DPI)
    return Recipe(
        op=operation.op,
        restoration_level=pick(operation.restoration_level, defaults.restoration_level),
        lightai_intensity=pick(operation.lightai_intensity, defaults.lightai_intensity),
        toneai_intensity=pick(operation.toneai_intensity, defaults.toneai_intensity),
        image_format=pick(operation.image_format, DEFAULT_IMAGE_FORMAT),
        quality=pick(operation.quality, defaults.quality),
        dpi=dpi,
    )
