"""Benchmark: the catalog's ``finalize`` step at 100,000 images, against moto's S3 server (issue #19: the run
ends a few seconds after the last transfer, and finalize is what runs then; and its memory must not grow
with the catalog).

The run folders a 25,000- and a 100,000-image run leave (19 batches each: their planned rows, result rows
and submission records in parts, the plan) are written to moto first; then, against the same server:

* **floor**: the I/O finalize cannot avoid, done plainly: read every batch's result file and write the
  result table once;
* **finalize**: :func:`leapi_provider.catalog.finalize.finalize_run` with the feed export (the
  ``marketplace_feed_etl`` DAG's), in a fresh process each time: its time, its steps' times, and its
  memory (peak RSS, and its growth over the RSS of the imports). Once at 25,000 images, twice at 100,000.

``LEAPI_BENCH_FINALIZE_IMAGES`` changes the larger size (default 100,000). The images the contact sheet
(6, the default) and the HTML report (48 thumbnails) show are in moto, sources and results, so both do
their real work.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

#: Images per batch: the plan cuts 100,000 images into 19 batches (docs/catalog.md, "Batch sizing"), and
#: a larger catalog into more batches of about the same size, so a smaller run here has fewer batches.
IMAGES_PER_BATCH = 5_264
#: The smaller run measured first is this many times smaller (finalize's memory must not grow with the run).
SIZE_RATIO = 4
#: Images the HTML report shows at most (leapi_provider.catalog.html_report.REPORT_THUMBNAILS).
SHOWN_IMAGES = 48
#: finalize's steps timed (those of the code under test).
PHASES = {
    "_stream_rows": "rows streamed (s)",
    "_credits_used": "credits (s)",
    "_write_contact_sheet": "contact sheet (s)",
    "report_thumbnails": "report's thumbnails (s)",
    "write_html_report": "HTML report (s)",
}
RECORD_PARTS_PER_BATCH = 6  # 526 pipelines a batch, 100 a part
BUCKET = "bench"
ROUNDS = 2
#: The same bench on the code before this one's change (main at f67b24c: records read beside the large
#: writes, the feed export row by row and written file after file), measured right after the "after" run
#: quoted in the closing note of issue #19, on the same machine.
BEFORE = (
    "Before (main at a34182b: the whole table assembled in memory, then written; this bench file, measured "
    "2026-12-04 23:15 UTC, quiet machine): finalize 2.6 s at 25,000 images, 5.1 and 4.8 s at 100,000; peak RSS "
    "0.43 GiB at 25,000, 0.67 GiB at 100,000 and 1.58 GiB at 400,000 images (growth over the imports 0.26 -> "
    "0.50 GiB for 25,000 -> 100,000: 1.9x). Streamed, at 400,000 images (the same harness, one run): peak RSS "
    "0.47 GiB, of which Arrow 28 MiB."
)


@contextmanager
def _moto() -> Iterator[str]:
    from devkit.s3 import MotoS3Server, aws_connection_json, s3_environment

    with tempfile.TemporaryDirectory(prefix="bench-finalize-") as tmp:
        moto = MotoS3Server(Path(tmp) / "moto.log")
        moto.start()
        saved = dict(os.environ)
        os.environ.update(s3_environment(moto))
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = aws_connection_json(moto.endpoint_url)
        try:
            import boto3

            boto3.client("s3", endpoint_url=moto.endpoint_url).create_bucket(Bucket=BUCKET)
            yield moto.endpoint_url
        finally:
            os.environ.clear()
            os.environ.update(saved)
            moto.stop()


def _result_rows(rows: np.ndarray, finished: datetime) -> pa.Table:
    from leapi_provider import manifests

    return manifests.conform_results(
        [
            {
                "image_id": f"sku-{i}",
                "manifest_row": int(i),
                "source_url": f"s3://{BUCKET}/sources/sku-{i}.jpg",
                "preset": "marketplace",
                "status": "done",
                "output_uri": f"s3://{BUCKET}/images/feed/marketplace/sku-{i}/{i:016x}.jpg",
                "output_width": 128,
                "output_height": 96,
                "output_format": "JPEG",
                "output_bytes": 3000 + int(i) % 500,
                "output_sha256": f"{i:064x}",
                "finished_at": finished + timedelta(milliseconds=int(i)),
                "pipeline_id": int(i) // 10,
            }
            for i in rows
        ]
    )


def _write_run_folder(settings: Any, run: Any, images: int) -> None:
    """What the plan and the batches of a run of ``images`` leave in its folder."""
    from leapi_provider import manifests
    from leapi_provider.catalog.storage import RunFolder, uri_of

    folder = RunFolder(settings, run)
    finished = datetime(2026, 12, 4, tzinfo=UTC)
    batch_uris = []
    for index, rows in enumerate(np.array_split(np.arange(images), _batches(images))):
        planned = pa.table({"manifest_row": rows, "image_id": [f"sku-{i}" for i in rows]})
        manifests.write_parquet_atomic(planned, folder.batch(index))
        batch_uris.append(uri_of(folder.batch(index)))
        manifests.write_parquet_atomic(_result_rows(rows, finished), folder.results(index))
        for part, part_rows in enumerate(np.array_split(rows, RECORD_PARTS_PER_BATCH)):
            record = pa.table({"manifest_row": part_rows, "newly_submitted": [True] * len(part_rows)})
            manifests.write_parquet_atomic(record, folder.submitted(index) / f"part-{part:05d}.parquet")
    manifests.write_parquet_atomic(manifests.empty_results(), folder.carried)
    _write_shown_images(images)
    manifests.write_json_atomic({"batches": batch_uris, "counts": {"manifest_rows": images}}, folder.plan)


def _batches(images: int) -> int:
    return -(-images // IMAGES_PER_BATCH)


def _write_shown_images(images: int) -> None:
    """The source and the result of the images the contact sheet and the report pick (the first by
    image id): small JPEGs, so both read, decode and draw real images."""
    import io

    import boto3
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (128, 96), "teal").save(buffer, format="JPEG")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for image_id in sorted(f"sku-{i}" for i in range(images))[:SHOWN_IMAGES]:
        i = int(image_id.removeprefix("sku-"))
        for key in (f"sources/{image_id}.jpg", f"images/feed/marketplace/{image_id}/{i:016x}.jpg"):
            s3.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())


def _floor(settings: Any, run: Any, images: int) -> float:
    """Read every batch's results and write the table once: the I/O finalize cannot avoid."""
    from leapi_provider import manifests
    from leapi_provider.catalog.storage import RunFolder, storage_path

    folder = RunFolder(settings, run)
    started = time.perf_counter()
    table = pa.concat_tables([manifests.read_parquet(folder.results(i)) for i in range(_batches(images))])
    manifests.write_result_table(
        table,
        storage_path(settings.results, settings.aws_conn_id) / "_floor",
        dag_run_id="floor",
        run_date=run.run_date,
    )
    return time.perf_counter() - started


@contextmanager
def _phase_timer(phases: dict[str, float]) -> Iterator[None]:
    """Time finalize's steps (wall seconds each; the steps run partly at once). A step the code under
    test does not have (an older finalize) is left out."""
    from leapi_provider.catalog import finalize

    originals: dict[str, Callable[..., Any]] = {}
    for name in PHASES:
        original = getattr(finalize, name, None)
        if original is None:
            continue
        originals[name] = original

        def timed(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                phases[_name] = time.perf_counter() - started

        setattr(finalize, name, functools.wraps(original)(timed))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(finalize, name, original)


def _settings() -> Any:
    from leapi_provider.catalog.settings import CatalogSettings

    return CatalogSettings(
        results=f"s3://{BUCKET}/results",
        images=f"s3://{BUCKET}/images",
        export=f"s3://{BUCKET}/export",
    )


def _run_of(images: int) -> Any:
    from leapi_provider.catalog.storage import CatalogRun

    key = f"manual__bench_{images}"
    return CatalogRun("marketplace_feed_etl", key, "2026-12-04", key)


def _finalize_in_child(environ: dict[str, str], images: int, answer: Any) -> None:
    """In a fresh process: finalize the run of ``images`` images; its time, steps and memory (peak RSS,
    and RSS before finalize started: the imports)."""
    import resource

    os.environ.update(environ)
    from leapi_provider.catalog.finalize import finalize_run

    settings, run = _settings(), _run_of(images)
    before = _rss_bytes()
    phases: dict[str, float] = {}
    with _phase_timer(phases):
        started = time.perf_counter()
        result = finalize_run(settings, run, export_feed=True)
        finalize_s = time.perf_counter() - started
    assert result["summary"]["rows"] == images and result["summary"]["credits_used"] == images
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    answer.put({"finalize_s": finalize_s, "phases": phases, "rss_before": before, "rss_peak": peak})


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure_in_child(images: int) -> dict[str, Any]:
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    answer = spawn.Queue()
    child = spawn.Process(target=_finalize_in_child, args=(dict(os.environ), images, answer))
    child.start()
    measured = answer.get(timeout=600)
    child.join()
    return measured


def run() -> str:
    images = int(os.environ.get("LEAPI_BENCH_FINALIZE_IMAGES") or 100_000)
    sizes = [images // SIZE_RATIO, images]
    with _moto():
        settings = _settings()
        for size in sizes:
            _write_run_folder(settings, _run_of(size), size)
        rows = []
        for size in [sizes[0], *[sizes[1]] * ROUNDS]:
            floor_s = _floor(settings, _run_of(size), size)
            rows.append((size, floor_s, _measure_in_child(size)))
    return _render(images, rows)


def _render(images: int, rows: list[tuple[int, float, dict[str, Any]]]) -> str:
    gib = 2**30
    small, large = rows[0][2], rows[-1][2]
    lines = [
        f"## The catalog's finalize: {images:,} images against moto's S3 server",
        "",
        (
            f"Command: `.venv/bin/python -m tests.bench finalize` (`LEAPI_BENCH_FINALIZE_IMAGES`, default 100,000). "
            f"The run folder of a run (batches of about {IMAGES_PER_BATCH:,} images: {_batches(images):,} at "
            f"{images:,} images; their result files and submission records in "
            f"{RECORD_PARTS_PER_BATCH} parts each) in moto; the floor reads the batches' results and writes the "
            "table once; finalize also writes the feed export (Parquet and CSV, the run's and `latest`), the HTML "
            "report and the credits. Each finalize runs in a fresh process: its time, each step's wall time "
            "(steps run partly at once), and its memory (peak RSS, and the growth over the RSS after its "
            f"imports). A run of {images // SIZE_RATIO:,} images first: memory must not grow with the run."
        ),
        "",
        f"| images | floor (s) | finalize (s) | x floor | {' | '.join(PHASES.values())} | peak RSS (GiB) | growth (GiB) |",
        "|" + "---:|" * (6 + len(PHASES)),
    ]
    for size, floor_s, measured in rows:
        phases = measured["phases"]
        cells = [f"{phases[name]:.1f}" if name in phases else "-" for name in PHASES]
        lines.append(
            f"| {size:,} | {floor_s:.1f} | {measured['finalize_s']:.1f} | {measured['finalize_s'] / floor_s:.1f} | "
            f"{' | '.join(cells)} | {measured['rss_peak'] / gib:.2f} | "
            f"{(measured['rss_peak'] - measured['rss_before']) / gib:.2f} |"
        )
    growth = [(m["rss_peak"] - m["rss_before"]) / gib for m in (small, large)]
    lines += [
        "",
        (
            f"Memory growth over the imports, {images // SIZE_RATIO:,} -> {images:,} images: "
            f"{growth[0]:.2f} -> {growth[1]:.2f} GiB ({growth[1] / max(growth[0], 1e-9):.1f}x for "
            f"{SIZE_RATIO}x the images)."
        ),
        "",
        BEFORE,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
