"""Engine benchmark: restoration quality on held-out photos, speed per core, peak memory, level grid.

    .venv/bin/python -m tests.bench engine      # writes docs/benchmarks/engine.md, docs/engine-levels.png

Quality: each held-out photograph (never trained on, ``restoration_spec.HELD_OUT_PHOTOS``) is degraded the way poor
marketplace photos are (antialiased bicubic downscale x2 / x4, then JPEG at quality 20, 40, 75 or kept
uncompressed) and brought back to its original size by the engine (level 5, light and tone off, PNG
output) and by plain bicubic and Lanczos upscales of the same input. PSNR and SSIM on luma, borders
cropped.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from devkit.engine_quality import (
    BORDER,
    QUALITIES,
    classical_upscale,
    decode,
    degrade,
    encode,
    engine_restore,
    y_metrics,
)
from leapi.models import MarketplacePreset
from leapi_server.engine import enhance
from leapi_server.engine.color import luma
from leapi_server.engine.restoration import BACKENDS, blockiness, load_model, run_tiled
from leapi_server.engine.restoration_spec import HELD_OUT_KINDS, HELD_OUT_PHOTOS, MODEL_PATH
from tests.bench.engine_colour import colour_section
from tests.bench.engine_speed import load_average, models_section, threads_section
from train.photos import MAX_SIDE, load_photo

REPO = Path(__file__).resolve().parents[2]
GRID_PATH = REPO / "docs" / "engine-levels.png"
SCALES = (2, 4)
SPEED_REPEATS = 7

# Targets (issue 12).
TARGET_JPEG_GAIN_X2_DB = 0.7
TARGET_CLEAN_GAIN_X2_DB = 2.3
TARGET_MP_PER_S_PER_CORE = 4.0


@dataclass
class Row:
    scale: int
    quality: int | None
    #: method -> photo -> PSNR / SSIM
    psnr: dict[str, dict[str, float]]
    ssim: dict[str, dict[str, float]]

    def mean_psnr(self, method: str) -> float:
        return statistics.fmean(self.psnr[method].values())

    def mean_ssim(self, method: str) -> float:
        return statistics.fmean(self.ssim[method].values())

    def gains(self, photos: Iterable[str] | None = None) -> list[float]:
        """Engine minus bicubic PSNR per photo (dB)."""
        names = list(self.psnr["engine"]) if photos is None else list(photos)
        return [self.psnr["engine"][n] - self.psnr["bicubic"][n] for n in names]

    def ssim_margins(self) -> dict[str, float]:
        return {n: self.ssim["engine"][n] - self.ssim["bicubic"][n] for n in self.ssim["engine"]}

    @property
    def label(self) -> str:
        return f"x{self.scale} {_input_label(self.quality)}"


METHODS = ("bicubic", "lanczos", "engine", "classical")


def quality_rows(photos: dict[str, np.ndarray]) -> list[Row]:
    rows = []
    for scale in SCALES:
        for quality in QUALITIES:
            row = Row(scale, quality, {m: {} for m in METHODS}, {m: {} for m in METHODS})
            for name, original in photos.items():
                reference, data = degrade(original, scale, quality)
                size = (reference.shape[1], reference.shape[0])
                outputs = {
                    "bicubic": classical_upscale(data, size, Image.Resampling.BICUBIC),
                    "lanczos": classical_upscale(data, size, Image.Resampling.LANCZOS),
                    "engine": engine_restore(data, size),
                    "classical": engine_restore(data, size, model=None),
                }
                for method, output in outputs.items():
                    row.psnr[method][name], row.ssim[method][name] = y_metrics(reference, output)
            rows.append(row)
    return rows


def seen_by_committed_model() -> set[str]:
    """Held-out photos that the committed model's own metadata lists among its training photos."""
    import onnxruntime

    meta = onnxruntime.InferenceSession(str(MODEL_PATH)).get_modelmeta().custom_metadata_map
    return set(json.loads(meta.get("train_photos", "[]"))) & set(HELD_OUT_PHOTOS)


def quality_section(rows: list[Row]) -> tuple[str, list[str]]:
    seen = seen_by_committed_model()
    lines = [
        (
            "| scale | input | PSNR bicubic | PSNR Lanczos | PSNR engine | gain mean | gain median | gain min "
            "| PSNR classical | SSIM bicubic | SSIM engine | SSIM classical | photos with SSIM below bicubic |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        gains = row.gains()
        below = sum(margin < 0 for margin in row.ssim_margins().values())
        lines.append(
            f"| x{row.scale} | {_input_label(row.quality)} | {row.mean_psnr('bicubic'):.2f} | "
            f"{row.mean_psnr('lanczos'):.2f} | **{row.mean_psnr('engine'):.2f}** | "
            f"**{statistics.fmean(gains):+.2f}** | **{statistics.median(gains):+.2f}** | {min(gains):+.2f} | "
            f"{row.mean_psnr('classical'):.2f} | {row.mean_ssim('bicubic'):.4f} | "
            f"**{row.mean_ssim('engine'):.4f}** | {row.mean_ssim('classical'):.4f} | {below} of {len(gains)} |"
        )
    lines += ["", *_per_photo_table(rows, seen)]
    if seen:
        clean = [n for n in rows[0].psnr["engine"] if n not in seen]
        lines += [
            "",
            (
                f"Marked *: in the committed model's training set ({', '.join(sorted(seen))}; it was trained "
                "before the held-out set was widened). Over the other photos only:"
            ),
            "",
            "| condition | gain mean | gain median |",
            "|---|---|---|",
            *(
                f"| {row.label} | {statistics.fmean(row.gains(clean)):+.2f} | "
                f"{statistics.median(row.gains(clean)):+.2f} |"
                for row in rows
            ),
        ]
    return "\n".join(lines), _quality_verdicts(rows)


def _per_photo_table(rows: list[Row], seen: set[str]) -> list[str]:
    lines = [
        "Per photo: engine minus bicubic PSNR (dB) / SSIM margin over bicubic (x1000), each condition:",
        "",
        "| photo | kind | " + " | ".join(row.label for row in rows) + " |",
        "|---|---|" + "---|" * len(rows),
    ]
    for name in rows[0].psnr["engine"]:
        cells = []
        for row in rows:
            gain = row.psnr["engine"][name] - row.psnr["bicubic"][name]
            margin = row.ssim_margins()[name] * 1000
            cells.append(f"{gain:+.2f} / {margin:+.1f}")
        mark = " *" if name in seen else ""
        lines.append(f"| {name}{mark} | {HELD_OUT_KINDS[name]} | " + " | ".join(cells) + " |")
    return lines


def _quality_verdicts(rows: list[Row]) -> list[str]:
    x2_jpeg = [r for r in rows if r.scale == 2 and r.quality is not None]
    clean = next(r for r in rows if r.scale == 2 and r.quality is None)
    weakest_mean = min(x2_jpeg, key=lambda r: statistics.fmean(r.gains()))
    weakest_median = min(x2_jpeg, key=lambda r: statistics.median(r.gains()))
    worst_margin, worst_row, worst_photo = min(
        (margin, row, name) for row in rows for name, margin in row.ssim_margins().items()
    )
    return [
        _verdict(
            f"x2 JPEG q20/40/75, lowest per-condition mean gain over bicubic ({weakest_mean.label})",
            statistics.fmean(weakest_mean.gains()),
            TARGET_JPEG_GAIN_X2_DB,
            "dB",
        ),
        _verdict(
            f"x2 JPEG q20/40/75, lowest per-condition median gain over bicubic ({weakest_median.label})",
            statistics.median(weakest_median.gains()),
            TARGET_JPEG_GAIN_X2_DB,
            "dB",
        ),
        _verdict(
            "x2 uncompressed, mean gain over bicubic",
            statistics.fmean(clean.gains()),
            TARGET_CLEAN_GAIN_X2_DB,
            "dB",
        ),
        _verdict(
            "x2 uncompressed, median gain over bicubic",
            statistics.median(clean.gains()),
            TARGET_CLEAN_GAIN_X2_DB,
            "dB",
        ),
        _verdict(
            f"SSIM margin over bicubic, worst photo and condition ({worst_photo}, {worst_row.label})",
            worst_margin,
            0.0,
            "",
        ),
    ]


def _input_label(quality: int | None) -> str:
    return "uncompressed" if quality is None else f"JPEG q{quality}"


def _verdict(what: str, value: float, target: float, unit: str) -> str:
    status = "met" if value >= target else "**NOT met**"
    shown = (
        f"{value:+.4f}" if not unit else (f"{value:.2f} {unit}" if unit == "MP/s" else f"{value:+.2f} {unit}")
    )
    wanted = (
        f"{target:+.4f}" if not unit else (f"{target:g} {unit}" if unit == "MP/s" else f"{target:+g} {unit}")
    )
    return f"- {what}: {shown} (target >= {wanted}): {status}"


def level_sweep(photos: dict[str, np.ndarray]) -> str:
    """What the levels do on a typical poor input (x2, JPEG q40), averaged over the held-out photos."""
    lines = [
        "| level | PSNR | SSIM | blockiness (1.0 = none) | mean abs. change vs level 1 |",
        "|---|---|---|---|---|",
    ]
    cases = [degrade(o, 2, 40) for o in photos.values()]
    firsts = [engine_restore(data, (ref.shape[1], ref.shape[0]), level=1) for ref, data in cases]
    for level in range(1, 11):
        psnrs, ssims, blocks, changes = [], [], [], []
        for (reference, data), first in zip(cases, firsts, strict=True):
            out = engine_restore(data, (reference.shape[1], reference.shape[0]), level=level)
            p, s = y_metrics(reference, out)
            psnrs.append(p)
            ssims.append(s)
            blocks.append(blockiness(luma(out)))
            changes.append(float(np.abs(luma(out).astype(np.int16) - luma(first)).mean()))
        lines.append(
            f"| {level} | {statistics.fmean(psnrs):.2f} | {statistics.fmean(ssims):.4f} | "
            f"{statistics.fmean(blocks):.3f} | {statistics.fmean(changes):.2f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------------


def _median_seconds(function, repeats: int = SPEED_REPEATS) -> float:
    function()  # warm-up: sessions, caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def speed_section(photos: dict[str, np.ndarray]) -> tuple[str, list[str]]:
    cv2.setNumThreads(1)
    source = np.asarray(
        Image.fromarray(photos["skimage:coffee.png"]).resize((900, 600), Image.Resampling.LANCZOS)
    )
    data = encode(source, 75)
    operation = MarketplacePreset(width=1800, height=1200, restoration_level=5)
    out_mp = 1800 * 1200 / 1e6

    def baseline() -> None:
        with Image.open(io.BytesIO(data)) as image:
            big = image.convert("RGB").resize((1800, 1200), Image.Resampling.BICUBIC)
        big.save(io.BytesIO(), format="JPEG", quality=85)

    results = {"baseline (decode, bicubic, encode)": _median_seconds(baseline)}
    models = {}
    for backend in BACKENDS:
        models[backend] = load_model(MODEL_PATH, backend, 1)
        results[f"marketplace level 5, {backend}"] = _median_seconds(
            lambda m=models[backend]: enhance(data, operation, model=m)
        )
    results["marketplace level 5, classical fallback"] = _median_seconds(
        lambda: enhance(data, operation, model=None)
    )
    lowres = luma(source).astype(np.float32) / 255
    model_only = {
        backend: _median_seconds(lambda m=model: run_tiled(m, lowres, 0.7, (0, 0)))
        for backend, model in models.items()
    }
    load = load_average()
    base = results["baseline (decode, bicubic, encode)"]
    lines = [
        "| pipeline (1 thread) | ms per image | output MP/s per core | x baseline time |",
        "|---|---|---|---|",
    ]
    for name, seconds in results.items():
        lines.append(f"| {name} | {seconds * 1000:.0f} | {out_mp / seconds:.2f} | {seconds / base:.1f} |")
    lines.append("")
    lines.append("| model alone, 900x600 luma -> 1800x1200 (1 thread) | ms |")
    lines.append("|---|---|")
    for backend, seconds in model_only.items():
        lines.append(f"| {backend} | {seconds * 1000:.0f} |")
    lines += ["", f"Load average (1 / 5 / 15 min) at the end: {load}, on {os.cpu_count()} cores."]
    best = min(
        (v for k, v in results.items() if k.startswith("marketplace level 5, ") and "classical" not in k),
    )
    verdicts = [
        _verdict(
            "marketplace 900x600 -> 1800x1200 at level 5, output MP/s per core",
            out_mp / best,
            TARGET_MP_PER_S_PER_CORE,
            "MP/s",
        )
    ]
    return "\n".join(lines), verdicts


# --------------------------------------------------------------------------------------------------
# The before/after grid
# --------------------------------------------------------------------------------------------------

GRID_LEVELS = (1, 3, 5, 7, 10)
GRID_CROPS = {
    "skimage:chelsea.png": (150, 70),
    "skimage:coffee.png": (330, 130),
    "skimage:rocket.jpg": (256, 110),
    "skimage:astronaut.png": (190, 60),
    "lomiri-wallpapers-16.04:Bridge_by_Sander_Klootwijk.jpg": (430, 210),
    "mate-backgrounds:mate/nature/GreenMeadow.jpg": (320, 240),
}  # original (x, y), in the photo as loaded (longer side at most train.photos.MAX_SIDE)
GRID_CROP = 128  # original pixels; the input is half that, JPEG q30
GRID_ZOOM = 2  # cells are shown enlarged (nearest neighbour) so the differences are visible


def build_grid(photos: dict[str, np.ndarray]) -> Path:
    """Rows: held-out crops. Columns: the input (JPEG q30 at half size), bicubic, levels, the original."""
    from PIL import ImageDraw

    columns = ["input: q30, half size", "bicubic", *(f"level {lv}" for lv in GRID_LEVELS), "original"]
    cell, label_h = GRID_CROP * GRID_ZOOM, 18
    grid = Image.new("RGB", (cell * len(columns), label_h + cell * len(GRID_CROPS)), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(columns):
        draw.text((c * cell + 4, 3), title, fill="black")
    size = (GRID_CROP, GRID_CROP)
    for r, (name, (x, y)) in enumerate(GRID_CROPS.items()):
        original = photos[name][y : y + GRID_CROP, x : x + GRID_CROP]
        half = np.asarray(Image.fromarray(original).resize((GRID_CROP // 2,) * 2, Image.Resampling.BICUBIC))
        data = encode(half, 30)
        cells = [
            np.asarray(Image.fromarray(decode(data)).resize(size, Image.Resampling.NEAREST)),
            classical_upscale(data, size, Image.Resampling.BICUBIC),
            *(engine_restore(data, size, level=level) for level in GRID_LEVELS),
            original,
        ]
        for c, pixels in enumerate(cells):
            shown = Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(shown, (c * cell, label_h + r * cell))
    GRID_PATH.parent.mkdir(parents=True, exist_ok=True)
    grid.save(GRID_PATH, optimize=True)
    return GRID_PATH


def run() -> str:
    photos = {name: load_photo(name) for name in HELD_OUT_PHOTOS}
    rows = quality_rows(photos)
    quality_table, quality_verdicts = quality_section(rows)
    colour_table, colour_verdicts = colour_section(photos)
    speed_table, speed_verdicts = speed_section(photos)
    threads_table, threads_verdicts = threads_section(photos["skimage:coffee.png"])
    models_table, models_verdicts = models_section()
    sweep = level_sweep(photos)
    grid = build_grid(photos)
    kinds = ", ".join(f"{name} ({kind})" for name, kind in HELD_OUT_KINDS.items())
    return "\n".join(
        [
            "## Engine (`leapi_server.engine`)",
            "",
            "### Targets",
            "",
            *quality_verdicts,
            *speed_verdicts,
            *threads_verdicts,
            *models_verdicts,
            *colour_verdicts,
            "",
            "### Restoration quality on held-out photos",
            "",
            (
                f"Held-out photos (never trained on nor used for a choice; `restoration_spec.HELD_OUT_KINDS`): "
                f"{kinds}. Wallpapers are first reduced to at most {MAX_SIDE} pixels on the longer side. Each "
                "photo is downscaled (Pillow bicubic, antialiased) x2 or x4, saved as JPEG (Pillow, 4:2:0) or PNG, "
                "and brought back to its original size. Engine: `preset/marketplace`, restoration level 5, light "
                f"and tone off, PNG output. PSNR (dB) and SSIM on luma (BT.601 Y'), {BORDER}-pixel borders "
                "cropped; PSNR and SSIM columns are means over the photos, gains are engine minus bicubic "
                "per photo, then mean / median / lowest. 'classical' is the engine with no model file."
            ),
            "",
            quality_table,
            "",
            "### Light and tone on held-out photos",
            "",
            colour_table,
            "",
            "### What the levels do (x2, JPEG q40, held-out photos)",
            "",
            sweep,
            "",
            f"Visual grid (held-out crops at each level): `{grid.relative_to(REPO)}`.",
            "",
            "### Speed",
            "",
            (
                "900x600 JPEG (q75) to 1800x1200 JPEG, `preset/marketplace` level 5 with its default light "
                "(1.0) and tone (0.5); one thread (`cv2.setNumThreads(1)`, onnxruntime "
                f"`intra_op_num_threads=1`); median of {SPEED_REPEATS}. Baseline: Pillow decode, bicubic "
                "resize, JPEG encode (q85), same run."
            ),
            "",
            speed_table,
            "",
            "### Threads per worker",
            "",
            (
                "The marketplace pipeline above (built-in model, level 5), through pools of spawned worker "
                "processes as the server's dispatcher makes them, each worker's OpenCV and onnxruntime given "
                "its threads; settings take turns round after round (the machine is shared, so its load falls "
                "on all of them alike). Spinning: onnxruntime's intra-op threads busy-wait for work "
                "(`session.intra_op.allow_spinning`); with one thread there is no pool to spin."
            ),
            "",
            threads_table,
            "",
            "### A user's model (`--restoration-model`): 25 MP output, speed and peak memory",
            "",
            (
                "Marketplace level 5, a 25 MP JPEG output, one fresh process per model (peak RSS is that image's "
                "alone), onnxruntime with every core of this machine (`threads`). The luma x2 network is the "
                "engine's own trained model; as `--restoration-model` it is a one-input graph (its residual added "
                "to a bicubic upscale inside the graph, `devkit/onnx_models.py`) run in tiles of "
                "192 pixels, overlapping by 16 and blended. SRVGGNetCompact is Real-ESRGAN's compact "
                "architecture (random weights: speed and memory do not depend on them)."
            ),
            "",
            models_table,
        ]
    )
