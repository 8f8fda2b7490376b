"""The speed parts of the engine benchmark (``bench_engine``) that run in other processes:

* **threads per worker**: ``leapi-server`` runs N worker processes, each giving onnxruntime (and OpenCV) its
  share of the cores. Every setting tried here enhances the same batch of images through a pool of N
  spawned workers, as the server's dispatcher does; the settings take turns, round after round, so that
  the load of a shared machine falls on all of them alike, and each setting's median round is reported.
* **a user's model** (``--restoration-model``): output megapixels per second per core and peak memory of
  one 25 MP output, each model in a fresh process, against the built-in model in the same run.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
#: Issue 12's target for the built-in model's 25 MP output.
TARGET_PEAK_RSS_MB = 600
#: Images per round and rounds per setting.
BATCH = 24
ROUNDS = 3


@dataclass(frozen=True)
class ThreadSetting:
    workers: int
    threads: int
    spin: bool

    @property
    def label(self) -> str:
        spin = "" if self.threads == 1 else (", spinning" if self.spin else ", no spinning")
        return f"{self.workers} worker(s) x {self.threads} thread(s){spin}"


_worker_model: object = None


def _init_worker(threads: int, spin: bool) -> None:
    """As ``leapi_server.worker.init_worker``: the worker's share of the cores for OpenCV and onnxruntime."""
    global _worker_model
    import cv2

    from leapi_server.engine.restoration import OnnxRuntimeModel
    from leapi_server.engine.restoration_spec import MODEL_PATH

    cv2.setNumThreads(threads)
    _worker_model = OnnxRuntimeModel(MODEL_PATH, threads, spin=spin)


def _enhance(data: bytes) -> int:
    from leapi.models import MarketplacePreset
    from leapi_server.engine import enhance

    operation = MarketplacePreset(width=1800, height=1200, restoration_level=5)
    return len(enhance(data, operation, model=_worker_model).data)


def _sample_jpeg(photo: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).resize((900, 600), Image.Resampling.LANCZOS).save(
        buffer, format="JPEG", quality=75
    )
    return buffer.getvalue()


def usable_cores() -> int:
    """The cores this process may run on (``taskset`` narrows them; ``os.cpu_count`` does not see it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_setting(cores: int) -> ThreadSetting:
    """What ``leapi-server`` runs by default on ``cores`` cores: ``--workers`` one per core
    (``config.default_workers``), each with its share of them (the dispatcher's ``cores // workers``)."""
    from leapi_server.engine.restoration import SPIN_WAIT

    workers = cores
    return ThreadSetting(workers=workers, threads=max(1, cores // workers), spin=SPIN_WAIT)


def _settings(cores: int) -> list[ThreadSetting]:
    tried = [
        default_setting(cores),
        ThreadSetting(1, cores, True),
        ThreadSetting(1, cores, False),
        ThreadSetting(cores, cores, True),
        ThreadSetting(cores, cores, False),
        ThreadSetting(1, 1, True),
    ]
    return list(dict.fromkeys(tried))


def threads_section(photo: np.ndarray) -> tuple[str, list[str]]:
    """Images per second of N workers x T threads on this machine's cores."""
    cores = usable_cores()
    data = _sample_jpeg(photo)
    settings = _settings(cores)
    pools = {
        setting: ProcessPoolExecutor(
            max_workers=setting.workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(setting.threads, setting.spin),
        )
        for setting in settings
    }
    rounds: dict[ThreadSetting, list[float]] = {setting: [] for setting in settings}
    try:
        for setting, pool in pools.items():  # start and warm every worker (model loaded, first image done)
            # Spawned workers inherit these: the native thread pools read them at import (as the dispatcher).
            for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[variable] = str(setting.threads)
            list(pool.map(_enhance, [data] * 2 * setting.workers))
        for _ in range(ROUNDS):
            for setting, pool in pools.items():
                started = time.perf_counter()
                list(pool.map(_enhance, [data] * BATCH))
                rounds[setting].append(BATCH / (time.perf_counter() - started))
    finally:
        for pool in pools.values():
            pool.shutdown()
    rates = {setting: statistics.median(values) for setting, values in rounds.items()}
    load = load_average()
    default = default_setting(cores)
    lines = [
        f"| setting ({cores} cores) | images/s (median of {ROUNDS} rounds of {BATCH}) | output MP/s | x default |",
        "|---|---|---|---|",
    ]
    for setting, rate in sorted(rates.items(), key=lambda item: -item[1]):
        mark = " **(default)**" if setting == default else ""
        lines.append(
            f"| {setting.label}{mark} | {rate:.2f} | {rate * 1800 * 1200 / 1e6:.1f} | "
            f"{rate / rates[default]:.2f} |"
        )
    best = max(rates, key=rates.__getitem__)
    fastest = best == default or rates[default] >= 0.97 * rates[best]
    verdict = (
        f"- threads per worker: the default ({default.label}) is the fastest of {len(settings)} settings "
        f"tried ({rates[default]:.2f} images/s; best {best.label}, {rates[best]:.2f}): "
        + ("met" if fastest else "**NOT met**")
    )
    lines += ["", f"Load average (1 / 5 / 15 min) at the end: {load}, on {os.cpu_count()} cores."]
    return "\n".join(lines), [verdict]


# --------------------------------------------------------------------------------------------------
# A user's model: throughput and peak memory of a 25 MP output, in a fresh process each
# --------------------------------------------------------------------------------------------------

_MODEL_PROBE = r"""
import io, json, resource, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
from leapi.models import MarketplacePreset
from leapi_server.engine import enhance
from leapi_server.engine.external import ExternalModel
from leapi_server.engine.model_spec import ExternalModelSpec
from leapi_server.engine.restoration import DEFAULT_THREADS, load_model
kind, model_path, scale = sys.argv[1], sys.argv[2], int(sys.argv[3])
out_w, out_h = 6124, 4082
w, h = out_w // scale, out_h // scale
rng = np.random.default_rng(0)
base = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
pixels = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC))
buffer = io.BytesIO(); Image.fromarray(pixels).save(buffer, format="JPEG", quality=90); data = buffer.getvalue()
del pixels, base
model = load_model() if kind == "built-in" else ExternalModel(ExternalModelSpec(Path(model_path), scale=scale))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
result = enhance(data, MarketplacePreset(width=out_w, height=out_h, restoration_level=5), model=model)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"before_mb": before, "peak_mb": peak, "seconds": seconds, "threads": DEFAULT_THREADS,
                  "input": [w, h], "output": [result.output.width, result.output.height]}))
"""


@dataclass(frozen=True)
class ModelCase:
    label: str
    kind: str  # "built-in" or "onnx"
    scale: int
    parameters: int = 0


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for the record beside timings on a shared machine."""
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def _probe(case: ModelCase, path: Path) -> dict[str, float]:
    threads = str(usable_cores())  # one process using every core it may, as a lone worker would
    load = os.getloadavg()[0]
    completed = subprocess.run(
        [sys.executable, "-c", _MODEL_PROBE, case.kind, str(path), str(case.scale)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "LEAPI_ENGINE_THREADS": threads, "OMP_NUM_THREADS": threads},
    )
    return {**json.loads(completed.stdout.strip().splitlines()[-1]), "load": load}


def _parameters(path: Path) -> int:
    import onnx

    return sum(int(np.prod(tensor.dims)) for tensor in onnx.load(str(path)).graph.initializer)


def models_section(extra: dict[ModelCase, Path] | None = None) -> tuple[str, list[str]]:
    """The built-in model, the same network as a user's model, and Real-ESRGAN's compact architecture
    (random weights, built with the onnx helper API); ``extra``: more exported models."""
    from devkit import onnx_models

    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="leapi-bench-models-") as folder:
        own = onnx_models.own_luma_x2(Path(folder) / "own_luma_x2.onnx")
        compact = onnx_models.srvgg_compact(Path(folder) / "srvgg_compact_x4.onnx")
        cases = {
            ModelCase("built-in luma x2 (the engine's own path)", "built-in", 2): own,
            ModelCase("luma x2, the same network as --restoration-model", "onnx", 2): own,
            ModelCase(
                "SRVGGNetCompact x4 RGB, 64 features x 16 convolutions (onnx helper API)", "onnx", 4
            ): compact,
            **(extra or {}),
        }
        results = {case: _probe(case, path) for case, path in cases.items()}
        sizes = {case: _parameters(path) for case, path in cases.items()}
    lines = [
        (
            "| model | parameters | input -> output | threads | seconds | output MP/s per core | x built-in speed "
            "| peak RSS (MB) | of which the image's | load average at its start |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    built_in = next(probe for case, probe in results.items() if case.kind == "built-in")
    for case, probe in results.items():
        (w, h), (out_w, out_h) = probe["input"], probe["output"]
        megapixels = out_w * out_h / 1e6
        per_core = megapixels / probe["seconds"] / min(cores, probe["threads"])
        lines.append(
            f"| {case.label} | {sizes[case]:,} | {w}x{h} -> {out_w}x{out_h} ({megapixels:.1f} MP) | "
            f"{probe['threads']} | {probe['seconds']:.1f} | {per_core:.2f} | "
            f"{built_in['seconds'] / probe['seconds']:.2f} | {probe['peak_mb']:.0f} | "
            f"{probe['peak_mb'] - probe['before_mb']:.0f} | {probe['load']:.1f} |"
        )
    lines += ["", f"Load average (1 / 5 / 15 min) at the end: {load_average()}, on {os.cpu_count()} cores."]
    verdict = (
        f"- peak RSS for a 25 MP output, built-in model: {built_in['peak_mb']:.0f} MB (target <= "
        f"{TARGET_PEAK_RSS_MB} MB): "
        + ("met" if built_in["peak_mb"] <= TARGET_PEAK_RSS_MB else "**NOT met**")
    )
    return "\n".join(lines), [verdict]


def main(argv: list[str]) -> None:
    """``python -m tests.bench.engine_speed [threads] [models] [--extra-model PATH:SCALE:LABEL ...]``:
    the sections alone, as Markdown (e.g. on another machine, narrowed to 2 cores with ``taskset``)."""
    import argparse

    from skimage import data

    parser = argparse.ArgumentParser()
    parser.add_argument("sections", nargs="*", default=["threads", "models"])
    parser.add_argument("--extra-model", action="append", default=[], metavar="PATH:SCALE:LABEL")
    args = parser.parse_args(argv)
    extra = {}
    for text in args.extra_model:
        path, scale, label = text.split(":", 2)
        extra[ModelCase(label, "onnx", int(scale))] = Path(path)
    print(f"{usable_cores()} usable cores, {os.cpu_count()} in the machine\n")
    if "threads" in args.sections:
        table, verdicts = threads_section(data.coffee())
        print(table, "", *verdicts, "", sep="\n", flush=True)
    if "models" in args.sections:
        print(models_section(extra)[0], flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
