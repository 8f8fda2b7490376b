"""The light and tone part of the engine benchmark (``bench_engine``): do they do no harm, and repair?

On the held-out photos (``restoration_spec.HELD_OUT_KINDS``), each preset's light stage at intensity 1.0
and tone stage at 0.5 (the docs' defaults):

* **do no harm**: a well-exposed photo (every kind but ``dark``) should barely change: the mean CIE76
  colour difference (Delta E, CIELAB) between the photo and its corrected version, median over the photos;
* **repair**: the same photos made one stop darker with a warm cast, both in linear light (what a wrong
  exposure and a tungsten white balance do), are corrected; the share of the Delta E to the original that
  the correction removes, median;
* **keep the night dark**: on the ``dark`` photos, the change of the mean luma (target: at most +15 %);
* **no new clipping**: the share of pixel channels at 255 after minus before (worst photo).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from skimage.color import deltaE_cie76, rgb2lab

from leapi_server.engine.color import linear_to_srgb, luma, srgb_to_linear
from leapi_server.engine.light import apply_light
from leapi_server.engine.presets import PRESETS
from leapi_server.engine.restoration_spec import HELD_OUT_KINDS
from leapi_server.engine.tone import apply_tone

#: The degradation to repair: one stop under (x0.5 in linear light) under a warm light (red up, blue down).
UNDER_EXPOSURE = 0.5
WARM_CAST = (1.2, 1.0, 0.75)
LIGHT_INTENSITY = 1.0
TONE_INTENSITY = 0.5
# Targets (issue 12), for preset/marketplace (the others are reported).
TARGET_WELL_EXPOSED_DELTA_E = 3.0
TARGET_REPAIRED_SHARE = 0.6
TARGET_DARK_LUMA_RISE = 0.15
TARGET_PRESET = "preset/marketplace"


def _colour(photo: np.ndarray) -> np.ndarray:
    return photo if photo.ndim == 3 else np.repeat(photo[..., None], 3, axis=2)


def delta_e(a: np.ndarray, b: np.ndarray) -> float:
    """Mean CIE76 Delta E between two sRGB uint8 images."""
    return float(deltaE_cie76(rgb2lab(a), rgb2lab(b)).mean())


def spoil(photo: np.ndarray) -> np.ndarray:
    """One stop under with a warm cast, in linear light."""
    linear = srgb_to_linear(photo / 255.0) * np.asarray(WARM_CAST) * UNDER_EXPOSURE
    return np.clip(np.round(linear_to_srgb(linear) * 255.0), 0, 255).astype(np.uint8)


def _mean_luma(image: np.ndarray) -> float:
    return float(luma(image).mean())


@dataclass
class StageFigures:
    """One stage with one preset over the held-out photos; per photo by name."""

    change: dict[str, float]  # Delta E, well-exposed photos
    repaired: dict[str, float]  # share repaired, well-exposed photos spoiled
    dark_luma_rise: dict[str, float]  # relative change of mean luma, dark photos
    new_clipping: dict[str, float]  # share of channels newly at 255, all photos

    def verdicts(self, stage: str) -> list[str]:
        change = statistics.median(self.change.values())
        rise = max(self.dark_luma_rise.values(), default=0.0)
        lines = [
            _verdict(
                f"{stage}, well-exposed photos, median Delta E76",
                change,
                TARGET_WELL_EXPOSED_DELTA_E,
                "<=",
                _delta,
            ),
            _verdict(
                f"{stage}, dark scenes, largest mean-luma rise", rise, TARGET_DARK_LUMA_RISE, "<=", _rise
            ),
        ]
        if self.repaired:
            repaired = statistics.median(self.repaired.values())
            lines.insert(
                1,
                _verdict(
                    f"{stage}, one stop under + warm cast, median share repaired",
                    repaired,
                    TARGET_REPAIRED_SHARE,
                    ">=",
                    _share,
                ),
            )
        return lines


def _delta(value: float) -> str:
    return f"{value:.2f}"


def _share(value: float) -> str:
    return f"{value * 100:.0f} %"


def _rise(value: float) -> str:
    return f"{value * 100:+.1f} %"


def _verdict(what: str, value: float, target: float, sense: str, shown: Callable[[float], str]) -> str:
    met = value <= target if sense == "<=" else value >= target
    return f"- {what}: {shown(value)} (target {sense} {shown(target)}): {'met' if met else '**NOT met**'}"


def stage_figures(
    photos: dict[str, np.ndarray], preset: str, stage: str, *, kinds: dict[str, str] = HELD_OUT_KINDS
) -> StageFigures:
    tuning = PRESETS[preset]

    def run(image: np.ndarray) -> np.ndarray:
        if stage == "light":
            return apply_light(image, intensity=LIGHT_INTENSITY, tuning=tuning.light)
        return apply_tone(image, intensity=TONE_INTENSITY, tuning=tuning.tone)

    figures = StageFigures({}, {}, {}, {})
    for name, photo in photos.items():
        image = _colour(photo)
        out = run(image)
        figures.new_clipping[name] = float(np.mean(out == 255) - np.mean(image == 255))
        if kinds[name] == "dark":
            figures.dark_luma_rise[name] = _mean_luma(out) / _mean_luma(image) - 1.0
            continue
        figures.change[name] = delta_e(image, out)
        if stage == "light":
            spoiled = spoil(image)
            figures.repaired[name] = 1.0 - delta_e(run(spoiled), image) / delta_e(spoiled, image)
    return figures


def colour_section(photos: dict[str, np.ndarray]) -> tuple[str, list[str]]:
    """Markdown tables and the target verdicts (marketplace)."""
    verdicts: list[str] = []
    summary = [
        (
            "| preset | stage (intensity) | median Delta E, well exposed | median repaired | largest dark-scene "
            "luma rise | worst new clipping |"
        ),
        "|---|---|---|---|---|---|",
    ]
    per_photo: dict[str, StageFigures] = {}
    for preset in PRESETS:
        for stage, intensity in (("light", LIGHT_INTENSITY), ("tone", TONE_INTENSITY)):
            figures = stage_figures(photos, preset, stage)
            repaired = (
                f"{statistics.median(figures.repaired.values()) * 100:.0f} %" if figures.repaired else "-"
            )
            summary.append(
                f"| {preset} | {stage} ({intensity:g}) | {statistics.median(figures.change.values()):.2f} | "
                f"{repaired} | {max(figures.dark_luma_rise.values()) * 100:+.1f} % | "
                f"{max(figures.new_clipping.values()) * 100:.3f} % |"
            )
            if preset == TARGET_PRESET:
                verdicts += figures.verdicts(f"{stage} at {intensity:g} ({preset}), held-out")
                per_photo[stage] = figures
    light, tone = per_photo["light"], per_photo["tone"]
    table = [
        (
            f"Per photo, `{TARGET_PRESET}` (Delta E76 to the photo; repaired: share of the spoiled photo's Delta E "
            "removed; dark scenes: mean-luma change):"
        ),
        "",
        "| photo | kind | light: Delta E | light: repaired | tone: Delta E | dark: light luma | dark: tone luma |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in photos:
        if HELD_OUT_KINDS[name] == "dark":
            table.append(
                f"| {name} | dark | | | | {light.dark_luma_rise[name] * 100:+.1f} % | "
                f"{tone.dark_luma_rise[name] * 100:+.1f} % |"
            )
        else:
            table.append(
                f"| {name} | {HELD_OUT_KINDS[name]} | {light.change[name]:.2f} | "
                f"{light.repaired[name] * 100:.0f} % | {tone.change[name]:.2f} | | |"
            )
    return "\n".join([*summary, "", *table]), verdicts


# --------------------------------------------------------------------------------------------------
# Tuning: the same figures on photos that are not held out (the light and tone settings were chosen so)
# --------------------------------------------------------------------------------------------------

#: Dark scenes among the tuning photos (the held-out set names its kinds; these are named here).
TUNING_DARK = {
    "skimage:hubble_deep_field.jpg",
    "skimage:retina.jpg",
    "skimage:moon.png",
    "lomiri-wallpapers-16.04:seeding_by_Clements_Engelhardt.jpg",
}


def tuning_figures() -> str:
    """Light and tone figures (marketplace) on the training and validation photos of the project's venv.

    ``.venv/bin/python -m tests.bench.engine_colour``: what the light and tone settings were chosen on.
    """
    from leapi_server.engine import restoration_spec
    from train.photos import load_photo

    names = [
        name
        for name in restoration_spec.TRAIN_PHOTOS + restoration_spec.VALIDATION_PHOTOS
        if name.partition(":")[0] in {"skimage", *restoration_spec.DEBIAN_PHOTO_PACKAGES}
    ]
    kinds = {name: "dark" if name in TUNING_DARK else "tuning" for name in names}
    photos = {name: load_photo(name) for name in names}
    lines = []
    for stage in ("light", "tone"):
        figures = stage_figures(photos, TARGET_PRESET, stage, kinds=kinds)
        lines += figures.verdicts(f"{stage}, tuning photos")
    return "\n".join(lines)


if __name__ == "__main__":
    print(tuning_figures())
