"""Benchmark: the catalog's ``finalize`` step at 100,000 images, against moto's S3 server (issue #19: the run
ends a few seconds after the last transfer, and finalize is what runs then).

The run folder a 100,000-image run leaves (19 batches: their planned rows, result rows and submission
records in parts, the plan) is written to moto first; then, in the same process and against the same
server, two timings:

* **floor**: the I/O finalize cannot avoid, done plainly: read every batch's result file and write the
  result table once;
* **finalize**: :func:`leapi_provider.catalog.finalize.finalize_run` with the feed export (the
  ``marketplace_feed_etl`` DAG's), its phases timed.

``LEAPI_BENCH_FINALIZE_IMAGES`` changes the size (default 100,000). The contact sheet is off (its 6 images'
downloads are not what grows with the run).
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

BATCHES = 19  # what the plan cuts 100,000 images into (docs/catalog.md, "Batch sizing")
RECORD_PARTS_PER_BATCH = 6  # 526 pipelines a batch, 100 a part
BUCKET = "bench"
ROUNDS = 2
#: The same bench on the code before this one's change (main at f67b24c: records read beside the large
#: writes, the feed export row by row and written file after file), measured right after the "after" run
#: quoted in the closing note of issue #19, on the same machine.
BEFORE = (
    "Before (main at f67b24c, this bench file, 2026-12-04, load average 5-6): finalize 8.6 and 8.4 s "
    "(floor 1.7 and 1.2 s); credits 5.0-5.9 s, feed export 5.7-6.4 s."
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
                "source_url": f"http://sources.example.com/{i}.jpg",
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
    for index, rows in enumerate(np.array_split(np.arange(images), BATCHES)):
        planned = pa.table({"manifest_row": rows, "image_id": [f"sku-{i}" for i in rows]})
        manifests.write_parquet_atomic(planned, folder.batch(index))
        batch_uris.append(uri_of(folder.batch(index)))
        manifests.write_parquet_atomic(_result_rows(rows, finished), folder.results(index))
        for part, part_rows in enumerate(np.array_split(rows, RECORD_PARTS_PER_BATCH)):
            record = pa.table({"manifest_row": part_rows, "newly_submitted": [True] * len(part_rows)})
            manifests.write_parquet_atomic(record, folder.submitted(index) / f"part-{part:05d}.parquet")
    manifests.write_parquet_atomic(manifests.empty_results(), folder.carried)
    manifests.write_json_atomic({"batches": batch_uris, "counts": {"manifest_rows": images}}, folder.plan)


def _floor(settings: Any, run: Any) -> float:
    """Read every batch's results and write the table once: the I/O finalize cannot avoid."""
    from leapi_provider import manifests
    from leapi_provider.catalog.storage import RunFolder, storage_path

    folder = RunFolder(settings, run)
    started = time.perf_counter()
    table = pa.concat_tables([manifests.read_parquet(folder.results(i)) for i in range(BATCHES)])
    manifests.write_result_table(
        table,
        storage_path(settings.results, settings.aws_conn_id) / "_floor",
        dag_run_id="floor",
        run_date=run.run_date,
    )
    return time.perf_counter() - started


@contextmanager
def _phase_timer(phases: dict[str, float]) -> Iterator[None]:
    """Time finalize's steps (wall seconds each; the steps run partly at once)."""
    from leapi_provider.catalog import finalize

    originals: dict[str, Callable[..., Any]] = {}
    targets = {
        name: finalize for name in ("_assemble", "_credits_used", "write_feed_export", "write_html_report")
    }
    targets["write_result_table"] = finalize.manifests  # type: ignore[assignment]
    for name, module in targets.items():
        originals[name] = original = getattr(module, name)

        def timed(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                phases[_name] = time.perf_counter() - started

        setattr(module, name, functools.wraps(original)(timed))
    try:
        yield
    finally:
        for name, module in targets.items():
            setattr(module, name, originals[name])


def run() -> str:
    images = int(os.environ.get("LEAPI_BENCH_FINALIZE_IMAGES") or 100_000)
    with _moto():
        from leapi_provider.catalog.finalize import finalize_run
        from leapi_provider.catalog.settings import CatalogSettings
        from leapi_provider.catalog.storage import CatalogRun

        settings = CatalogSettings(
            results=f"s3://{BUCKET}/results",
            images=f"s3://{BUCKET}/images",
            export=f"s3://{BUCKET}/export",
            contact_sheet_images=0,
        )
        run = CatalogRun("marketplace_feed_etl", "manual__bench", "2026-12-04", "manual__bench")
        _write_run_folder(settings, run, images)
        rows = []
        for _ in range(ROUNDS):
            floor_s = _floor(settings, run)
            phases: dict[str, float] = {}
            with _phase_timer(phases):
                started = time.perf_counter()
                result = finalize_run(settings, run, export_feed=True)
                finalize_s = time.perf_counter() - started
            assert result["summary"]["rows"] == images and result["summary"]["credits_used"] == images
            rows.append((floor_s, finalize_s, phases))
    lines = [
        f"## The catalog's finalize: {images:,} images against moto's S3 server",
        "",
        (
            f"Command: `.venv/bin/python -m tests.bench finalize` (`LEAPI_BENCH_FINALIZE_IMAGES`, default 100,000). "
            f"The run folder of a {images:,}-image run ({BATCHES} batches, their result files and submission records "
            f"in {RECORD_PARTS_PER_BATCH} parts each) in moto; the floor reads the batches' results and writes the "
            "table once; finalize also writes the feed export (Parquet and CSV, the run's and `latest`), the HTML "
            "report and the credits. Each step's wall time (steps run partly at once)."
        ),
        "",
        "| round | floor (s) | finalize (s) | x floor | batches' files | credits (records) | result table | feed export | HTML report |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for number, (floor_s, finalize_s, phases) in enumerate(rows, 1):
        lines.append(
            f"| {number} | {floor_s:.1f} | {finalize_s:.1f} | {finalize_s / floor_s:.1f} | "
            f"{phases['_assemble']:.1f} | {phases['_credits_used']:.1f} | {phases['write_result_table']:.1f} | "
            f"{phases['write_feed_export']:.1f} | {phases['write_html_report']:.1f} |"
        )
    lines += ["", BEFORE]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
