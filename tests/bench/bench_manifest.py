"""Benchmark: a 1,000,000-row manifest read, validated and planned into batches (time and peak memory).

Each measurement runs in a fresh interpreter so that its peak RSS is its own. The baseline is the cheapest
possible look at the same file: ``pyarrow.parquet.read_table``. Two manifests: a realistic catalog (three
presets, a few sizes and qualities, ~0.5% bad rows of every kind, some duplicate ids) and a worst case in
which every row asks for a different operation (one model validation per row).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 1_000_000
URLS_PER_PIPELINE = 10
MAX_BATCHES = 1024  # Airflow's default [core] max_map_length


def make_manifest(path: Path, *, rows: int, distinct_operations: bool, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    index = np.arange(rows)
    image_id = np.char.add("sku-", index.astype("U8")).astype(object)
    url = np.char.add(
        np.char.add("https://cdn.example.com/catalog/", (index % 997).astype("U3")),
        np.char.add("/", np.char.add(index.astype("U8"), ".jpg")),
    ).astype(object)
    preset = rng.choice(np.array(["marketplace", "realestate", "print"], dtype=object), rows)
    width = rng.choice([800, 1200, 1600, 2000], rows).astype(np.int64)
    quality = rng.choice([75, 85, 95], rows).astype(np.int64)
    if distinct_operations:  # every row a different (width, quality) pair
        width, quality = 100 + index % 39_000, 1 + index // 39_000
    dpi = np.where(preset == "print", 300, -1)
    # ~0.5% bad rows of each kind, and some duplicate ids.
    bad = rng.random(rows)
    url[bad < 0.001] = None
    url[(bad >= 0.001) & (bad < 0.002)] = "ftp://legacy.example.com/x.jpg"
    preset[(bad >= 0.002) & (bad < 0.003)] = "instagram"
    width[(bad >= 0.003) & (bad < 0.004)] = 99_999
    duplicates = (bad >= 0.004) & (bad < 0.005)
    image_id[duplicates] = image_id[np.maximum(index[duplicates] - 1, 0)]
    table = pa.table(
        {
            "image_id": pa.array(image_id, pa.string()),
            "source_url": pa.array(url, pa.string()),
            "preset": pa.array(preset, pa.string()),
            "width": pa.array(width, pa.int32()),
            "quality": pa.array(quality, pa.int32()),
            "dpi": pa.array(dpi, pa.int32(), mask=dpi < 0),
        }
    )
    pq.write_table(table, path, compression="zstd")


_CHILD = r"""
import json, resource, sys, time
import psutil
mode, path = sys.argv[1], sys.argv[2]
import pyarrow.parquet as pq
from leapi_provider import manifests
before = psutil.Process().memory_info().rss
t0 = time.perf_counter()
out = {}
if mode == "baseline":
    table = pq.read_table(path)
    out["rows"] = table.num_rows
else:
    manifest = manifests.read_manifest(path)
    t1 = time.perf_counter()
    validation = manifests.validate_manifest(manifest)
    t2 = time.perf_counter()
    plan = manifests.plan_batches(validation.valid, urls_per_pipeline=int(sys.argv[3]), max_batches=int(sys.argv[4]))
    t3 = time.perf_counter()
    out.update(read_s=t1 - t0, validate_s=t2 - t1, plan_s=t3 - t2, rows=validation.total_rows,
               valid=validation.valid.num_rows, rejects=validation.rejects.num_rows,
               operations=plan.num_operations, pipelines=plan.num_pipelines, batches=plan.num_batches,
               pipelines_per_batch=plan.pipelines_per_batch)
out["total_s"] = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out["peak_mb"] = (peak - before) / 2**20
print(json.dumps(out))
"""


def _measure(mode: str, path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path), str(URLS_PER_PIPELINE), str(MAX_BATCHES)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _best_of(mode: str, path: Path, runs: int = 3) -> dict:
    results = [_measure(mode, path) for _ in range(runs)]
    return min(results, key=lambda r: r["total_s"])


def run() -> str:
    lines = [
        "## Manifest validation and planning (1,000,000 rows)",
        "",
        (
            f"`leapi_provider.manifests`: `read_manifest` + `validate_manifest` + `plan_batches` (up to "
            f"{URLS_PER_PIPELINE} URLs per pipeline, at most {MAX_BATCHES} batches), each run in a fresh "
            "interpreter, best of 3. Baseline: `pyarrow.parquet.read_table` of the same file in the same "
            "run. Peak memory is the growth of peak RSS over the interpreter's RSS after imports."
        ),
        "",
        "| manifest | step | time (s) | x baseline | peak memory (MiB) | x baseline |",
        "|---|---|---:|---:|---:|---:|",
    ]
    details = []
    with tempfile.TemporaryDirectory(prefix="bench-manifest-") as tmp:
        for label, distinct in (("catalog (realistic)", False), ("every row a distinct operation", True)):
            path = Path(tmp) / f"manifest-{int(distinct)}.parquet"
            make_manifest(path, rows=ROWS, distinct_operations=distinct)
            size_mb = path.stat().st_size / 2**20
            base = _best_of("baseline", path)
            full = _best_of("full", path)
            lines.append(
                f"| {label} ({size_mb:.0f} MiB Parquet) | `pq.read_table` (baseline) | {base['total_s']:.2f} | 1.0 "
                f"| {base['peak_mb']:.0f} | 1.0 |"
            )
            lines.append(
                f"| {label} | read + validate + plan | {full['total_s']:.2f} | "
                f"{full['total_s'] / base['total_s']:.1f} | {full['peak_mb']:.0f} | "
                f"{full['peak_mb'] / base['peak_mb']:.1f} |"
            )
            details.append(
                f"- {label}: read {full['read_s']:.2f} s, validate {full['validate_s']:.2f} s, plan "
                f"{full['plan_s']:.2f} s; {full['valid']:,} valid rows, {full['rejects']:,} rejects, "
                f"{full['operations']:,} distinct operations -> {full['pipelines']:,} pipelines in "
                f"{full['batches']:,} batches of {full['pipelines_per_batch']} pipelines."
            )
    return "\n".join([*lines, "", *details])


if __name__ == "__main__":
    print(run())
