"""Keep or not: a candidate model against the committed one, on the validation photos only.

    .venv/bin/python -m train.compare_on_validation .work/train/candidate.onnx

Runs in the project's environment (onnxruntime, the engine), not the training one. Every validation photo
that either model was trained on (per its metadata) is left out, so both are judged on photos neither has
seen. Degradation and metrics are the engine benchmark's (``devkit/engine_quality.py``): x2, JPEG
q20/40/75 and uncompressed, luma PSNR / SSIM against bicubic, through the whole engine at level 5 with light
and tone off. The held-out photos are never read here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import onnxruntime
from PIL import Image

from devkit.engine_quality import QUALITIES, classical_upscale, degrade, engine_restore, y_metrics
from leapi_server.engine.restoration import load_model
from leapi_server.engine.restoration_spec import MODEL_PATH
from train.photos import VALIDATION_PHOTOS, PhotoMissing, load_photo


def trained_on(path: Path) -> set[str]:
    meta = onnxruntime.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    return set(json.loads(meta.get("train_photos", "[]")))


def gains(path: Path, photos: list[str]) -> dict[int | None, tuple[list[float], list[float]]]:
    """Per quality: (PSNR gains over bicubic, SSIM margins over bicubic), one per photo."""
    model = load_model(path, "onnxruntime", 1)
    result: dict[int | None, tuple[list[float], list[float]]] = {q: ([], []) for q in QUALITIES}
    for name in photos:
        original = load_photo(name)
        original = original if original.ndim == 3 else original[..., None].repeat(3, axis=2)
        for quality in QUALITIES:
            reference, data = degrade(original, 2, quality)
            size = (reference.shape[1], reference.shape[0])
            psnr_b, ssim_b = y_metrics(reference, classical_upscale(data, size, Image.Resampling.BICUBIC))
            psnr_e, ssim_e = y_metrics(reference, engine_restore(data, size, model=model))
            result[quality][0].append(psnr_e - psnr_b)
            result[quality][1].append(ssim_e - ssim_b)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--committed", type=Path, default=MODEL_PATH)
    args = parser.parse_args(argv)
    seen = trained_on(args.candidate) | trained_on(args.committed)
    photos = []
    for name in VALIDATION_PHOTOS:
        if name in seen:
            continue
        try:
            load_photo(name)
        except (PhotoMissing, ModuleNotFoundError) as missing:  # e.g. sklearn's photos: training venv only
            print(f"skipped {name}: {missing}", file=sys.stderr)
            continue
        photos.append(name)
    print(f"validation photos neither model was trained on: {', '.join(photos)}")
    for label, path in (("committed", args.committed), ("candidate", args.candidate)):
        figures = gains(path, photos)
        cells = []
        for quality, (psnr, ssim) in figures.items():
            name = "clean" if quality is None else f"q{quality}"
            cells.append(f"{name} {statistics.fmean(psnr):+.2f} dB (SSIM {min(ssim) * 1000:+.1f}e-3 worst)")
        jpeg = statistics.fmean(statistics.fmean(figures[q][0]) for q in QUALITIES if q is not None)
        print(f"{label:9s} {path.name}: {'; '.join(cells)}; JPEG mean {jpeg:+.3f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
