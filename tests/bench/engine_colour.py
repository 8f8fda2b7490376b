"""The light and tone part of the engine benchmark (``bench_engine``): do they do no harm, even at the tails,
keep intentional moods, and repair what is wrong?

For each photo set (the held-out photos of ``restoration_spec.HELD_OUT_KINDS``; or, for tuning, the
training and validation photos), each preset's light stage at intensity 1.0 and tone stage at 0.5 (the
docs' defaults):

* **do no harm**: a well-exposed photo (every kind but ``dark``) should barely change: the mean CIE76
  colour difference (Delta E, CIELAB) between the photo and its corrected version, median **and worst**,
  per kind;
* **keep moods**: the same measure on mood scenes: the real ones (``restoration_spec.HELD_OUT_MOODS``) and
  each well-exposed photo graded as blue hour, sunset, fog, black and white, toned and a product on a
  one-colour backdrop (``devkit.moods``; other grades for the tuning photos than for the
  held-out ones);
* **repair**: the well-exposed photos made one stop darker with a warm cast, both in linear light (what a
  wrong exposure and a tungsten white balance do), are corrected; the share of the Delta E to the original
  that the correction removes, median and worst;
* **keep the night dark**: on the ``dark`` photos, the change of the mean luma (target: at most +15 %);
* **no new clipping**: the share of pixel channels at 255 after minus before (worst photo).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from skimage.color import deltaE_cie76, rgb2lab

from devkit.moods import MOODS, mood_scene
from leapi_server.engine.color import linear_to_srgb, luma, srgb_to_linear
from leapi_server.engine.light import apply_light
from leapi_server.engine.presets import PRESETS
from leapi_server.engine.restoration_spec import HELD_OUT_KINDS, HELD_OUT_MOODS
from leapi_server.engine.tone import apply_tone

#: The degradation to repair: one stop under (x0.5 in linear light) under a warm light (red up, blue down).
UNDER_EXPOSURE = 0.5
WARM_CAST = (1.2, 1.0, 0.75)
LIGHT_INTENSITY = 1.0
TONE_INTENSITY = 0.5
# Targets (issues 12 and 23), for preset/marketplace (the others are reported).
TARGET_MEDIAN_DELTA_E = {"light": 1.0, "tone": 3.0}
TARGET_WORST_DELTA_E = 6.0
TARGET_REPAIRED_SHARE = 0.55
AIM_REPAIRED_SHARE = 0.6
TARGET_DARK_LUMA_RISE = 0.15
TARGET_PRESET = "preset/marketplace"
#: Mood grades reported but not held to the target: a warm toning of a neutral scene is, to any light
#: estimate, a neutral scene under tungsten light (a white product on white under a household lamp), which
#: the light corrects on purpose.
REPORTED_ONLY_MOODS = {"toned"}
#: Seeds of the mood grades: the held-out photos' grades differ from the tuning photos'.
HELD_OUT_MOOD_SEED = 1000
TUNING_MOOD_SEED = 0


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


def _short(name: str) -> str:
    return name.rpartition(":")[2].rpartition("/")[2]


@dataclass
class StageFigures:
    """One stage with one preset over a photo set; per photo (or scene) by name."""

    kinds: dict[str, str]
    change: dict[str, float] = field(default_factory=dict)  # Delta E, well-exposed photos
    repaired: dict[str, float] = field(default_factory=dict)  # share repaired, well-exposed photos spoiled
    moods: dict[str, dict[str, float]] = field(default_factory=dict)  # mood -> scene -> Delta E
    dark_luma_rise: dict[str, float] = field(default_factory=dict)  # relative change of mean luma
    new_clipping: dict[str, float] = field(default_factory=dict)  # share of channels newly at 255

    def by_kind(self) -> dict[str, dict[str, float]]:
        kinds: dict[str, dict[str, float]] = {}
        for name, value in self.change.items():
            kinds.setdefault(self.kinds[name], {})[name] = value
        return kinds

    def verdicts(self, stage: str, what: str) -> list[str]:
        worst_name, worst = _worst(self.change)
        lines = [
            _verdict(
                f"{stage}, {what}, well-exposed photos, median Delta E76",
                statistics.median(self.change.values()),
                TARGET_MEDIAN_DELTA_E[stage],
                "<=",
                _delta,
            ),
            _verdict(
                f"{stage}, {what}, well-exposed photos, worst Delta E76 ({_short(worst_name)})",
                worst,
                TARGET_WORST_DELTA_E,
                "<=",
                _delta,
            ),
        ]
        if self.moods:
            scenes = {
                f"{mood}: {name}": v
                for mood, values in self.moods.items()
                if mood not in REPORTED_ONLY_MOODS
                for name, v in values.items()
            }
            scene, value = _worst(scenes)
            lines.append(
                _verdict(
                    f"{stage}, {what}, mood scenes but toned ({len(scenes)}), worst Delta E76 ({scene})",
                    value,
                    TARGET_WORST_DELTA_E,
                    "<=",
                    _delta,
                )
            )
        if self.repaired:
            share = statistics.median(self.repaired.values())
            lines.append(
                _verdict(
                    f"{stage}, {what}, one stop under + warm cast, median share repaired (aim "
                    f"{_share(AIM_REPAIRED_SHARE)}; worst {_share(min(self.repaired.values()))})",
                    share,
                    TARGET_REPAIRED_SHARE,
                    ">=",
                    _share,
                )
            )
        if self.dark_luma_rise:
            name, rise = _worst(self.dark_luma_rise)
            lines.append(
                _verdict(
                    f"{stage}, {what}, dark scenes, largest mean-luma rise ({_short(name)})",
                    rise,
                    TARGET_DARK_LUMA_RISE,
                    "<=",
                    _rise,
                )
            )
        return lines


def _worst(values: dict[str, float]) -> tuple[str, float]:
    name = max(values, key=values.__getitem__)
    return name, values[name]


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
    photos: dict[str, np.ndarray],
    preset: str,
    stage: str,
    *,
    kinds: dict[str, str],
    moods: dict[str, str],
    mood_seed: int | None,
) -> StageFigures:
    """One stage of one preset over ``photos``.

    :param kinds: each photo's kind (``dark`` ones are measured by their luma only).
    :param moods: photos that carry a real mood (name -> mood): also measured as mood scenes.
    :param mood_seed: grade each well-exposed photo with every mood, from this seed; ``None``: no grades.
    """
    tuning = PRESETS[preset]

    def run(image: np.ndarray) -> np.ndarray:
        if stage == "light":
            return apply_light(image, intensity=LIGHT_INTENSITY, tuning=tuning.light)
        return apply_tone(image, intensity=TONE_INTENSITY, tuning=tuning.tone)

    figures = StageFigures(kinds=kinds)
    for index, (name, photo) in enumerate(photos.items()):
        image = _colour(photo)
        out = run(image)
        figures.new_clipping[name] = float(np.mean(out == 255) - np.mean(image == 255))
        if name in moods:
            figures.moods.setdefault(f"real: {moods[name]}", {})[_short(name)] = delta_e(image, out)
        if kinds[name] == "dark":
            figures.dark_luma_rise[name] = _mean_luma(out) / _mean_luma(image) - 1.0
            continue
        figures.change[name] = delta_e(image, out)
        if stage == "light":
            spoiled = spoil(image)
            figures.repaired[name] = 1.0 - delta_e(run(spoiled), image) / delta_e(spoiled, image)
        if mood_seed is None:
            continue
        for offset, mood in enumerate(MOODS):
            scene = mood_scene(image, mood, mood_seed + 10 * index + offset)
            figures.moods.setdefault(mood, {})[_short(name)] = delta_e(scene, run(scene))
    return figures


def _median_worst(values: dict[str, float]) -> str:
    name, worst = _worst(values)
    return f"{statistics.median(values.values()):.2f} | {worst:.2f} ({_short(name)})"


def category_table(light: StageFigures, tone: StageFigures) -> list[str]:
    """Median and worst Delta E per kind and per mood, and the repair, for one preset."""
    lines = [
        "| category | photos | light: median | light: worst | tone: median | tone: worst |",
        "|---|---|---|---|---|---|",
    ]
    light_kinds, tone_kinds = light.by_kind(), tone.by_kind()
    for kind in sorted(light_kinds):
        lines.append(
            f"| {kind} | {len(light_kinds[kind])} | {_median_worst(light_kinds[kind])} | "
            f"{_median_worst(tone_kinds[kind])} |"
        )
    for mood in sorted(light.moods, key=lambda m: (m.startswith("real"), m)):
        note = " (reported, no target)" if mood in REPORTED_ONLY_MOODS else ""
        lines.append(
            f"| mood: {mood}{note} | {len(light.moods[mood])} | {_median_worst(light.moods[mood])} | "
            f"{_median_worst(tone.moods[mood])} |"
        )
    lines.append(
        f"| **all well-exposed** | {len(light.change)} | {_median_worst(light.change)} | "
        f"{_median_worst(tone.change)} |"
    )
    worst_name = min(light.repaired, key=light.repaired.__getitem__)
    repaired = statistics.median(light.repaired.values())
    worst = f"{_share(light.repaired[worst_name])} ({_short(worst_name)})"
    lines += [
        "",
        f"One stop under + warm cast, share repaired by light: median {_share(repaired)}, worst {worst}.",
    ]
    return lines


def colour_section(photos: dict[str, np.ndarray]) -> tuple[str, list[str]]:
    """Markdown tables and the target verdicts (marketplace), on the held-out photos."""
    verdicts: list[str] = []
    summary = [
        (
            "| preset | stage (intensity) | well exposed: median Delta E | worst | repaired: median | worst | "
            "largest dark-scene luma rise | worst new clipping |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    per_stage: dict[str, StageFigures] = {}
    for preset in PRESETS:
        for stage, intensity in (("light", LIGHT_INTENSITY), ("tone", TONE_INTENSITY)):
            target = preset == TARGET_PRESET
            figures = stage_figures(
                photos,
                preset,
                stage,
                kinds=HELD_OUT_KINDS,
                moods=HELD_OUT_MOODS,
                mood_seed=HELD_OUT_MOOD_SEED if target else None,
            )
            summary.append(_summary_row(preset, stage, intensity, figures))
            if target:
                verdicts += figures.verdicts(stage, f"at {intensity:g} ({preset}), held-out")
                per_stage[stage] = figures
    light, tone = per_stage["light"], per_stage["tone"]
    table = [
        f"Per category, `{TARGET_PRESET}` (Delta E76 to the photo or scene; worst with its photo):",
        "",
        *category_table(light, tone),
        "",
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


def _summary_row(preset: str, stage: str, intensity: float, figures: StageFigures) -> str:
    worst_name, worst = _worst(figures.change)
    repaired = "- | -"
    if figures.repaired:
        values = figures.repaired.values()
        repaired = f"{statistics.median(values) * 100:.0f} % | {min(values) * 100:.0f} %"
    return (
        f"| {preset} | {stage} ({intensity:g}) | {statistics.median(figures.change.values()):.2f} | "
        f"{worst:.2f} ({_short(worst_name)}) | {repaired} | {max(figures.dark_luma_rise.values()) * 100:+.1f} % | "
        f"{max(figures.new_clipping.values()) * 100:.3f} % |"
    )


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


def tuning_photo_names() -> list[str]:
    """The training and validation photos of the sources in the project's environment."""
    from leapi_server.engine import restoration_spec

    return [
        name
        for name in restoration_spec.TRAIN_PHOTOS + restoration_spec.VALIDATION_PHOTOS
        if name.partition(":")[0] in {"skimage", *restoration_spec.DEBIAN_PHOTO_PACKAGES}
    ]


def tuning_figures(names: Iterable[str] | None = None) -> str:
    """Light and tone figures (marketplace) on the tuning photos and their mood scenes.

    ``.venv/bin/python -m tests.bench.engine_colour``: what the light and tone settings were chosen on.
    """
    from train.photos import load_photo

    chosen = list(names or tuning_photo_names())
    kinds = {name: "dark" if name in TUNING_DARK else "tuning" for name in chosen}
    photos = {name: load_photo(name) for name in chosen}
    figures = {
        stage: stage_figures(photos, TARGET_PRESET, stage, kinds=kinds, moods={}, mood_seed=TUNING_MOOD_SEED)
        for stage in ("light", "tone")
    }
    lines = [*category_table(figures["light"], figures["tone"]), ""]
    for stage, stage_result in figures.items():
        lines += stage_result.verdicts(stage, "tuning photos")
    return "\n".join(lines)


if __name__ == "__main__":
    print(tuning_figures())
