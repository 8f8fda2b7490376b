"""The transfer step: each result of the batch's finished pipelines, downloaded (verified) into ``images``,
and their result rows; called as pipelines finish, not once at the end.

The batch's result rows are its record of what was transferred (``results/batch-NNNNN.parquet``): they
are rewritten (atomically) after each call, and during a long call every :data:`_FLUSH_EVERY_S` seconds
with the pipelines whose images are all copied. A resume transfers only pipelines without rows, so a
killed task redoes at most the pipelines it was copying (downloads: results stay downloadable for 24
hours; nothing is charged again).

An image that failed (a broken source, a pipeline in ERROR, an expired or corrupt result) gets its own
``error`` row; the batch goes on. Storage or network failures fail the task: a re-run downloads again,
paying nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from leapi.errors import LeapiError
from leapi.models import PipelineStatus
from leapi.results import result_files
from leapi_provider import manifests
from leapi_provider.catalog.batch import CatalogBatch
from leapi_provider.catalog.settings import CatalogSettings, safe_key_part
from leapi_provider.catalog.sources import restore_source_uris
from leapi_provider.catalog.storage import CatalogRun, read_parquet_if_exists, storage_path, uri_of
from leapi_provider.manifests import ResultStatus
from leapi_provider.results import spooled_download

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from leapi.models import Pipeline
    from leapi.results import ResultFile
    from leapi_provider.hooks.leapi import LeapiHook

log = logging.getLogger(__name__)

#: A long transfer logs its progress (``n/N images, x MB``) every 100 images and at least this often ...
_PROGRESS_EVERY_S = 30.0
#: ... and records the pipelines it finished copying at least this often (what a killed task keeps).
_FLUSH_EVERY_S = 30.0

#: Columns a result row takes from its submission record.
_RECORD_COLUMNS = (
    "image_id",
    "manifest_row",
    "source_url",
    "preset",
    "operation_json",
    "operation_hash",
    "pipeline_id",
    "source_fingerprint",
    "submitted_at",
)


def _pipeline_error_text(pipeline: Pipeline, url: str | None) -> str:
    """The API's reason for a failed image: its own line of ``errors`` when one names its URL."""
    for item in pipeline.errors or []:
        text = item if isinstance(item, str) else json.dumps(item, default=str)
        if url and url in text:
            return text
    if pipeline.errors:
        return "; ".join(str(e) for e in pipeline.errors)[:2000]
    return str(pipeline.error or "ERROR (no details)")


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def object_key(template: str, **fields: Any) -> str:
    """The object key of one image (``image_id`` made key-safe)."""
    fields = dict(fields)
    fields["image_id"] = safe_key_part(str(fields["image_id"]))
    return template.format(**fields).lstrip("/")


@dataclass(frozen=True)
class _CopyJob:
    """One finished image to copy: its result row so far, the API's result file, and its pipeline."""

    row: dict[str, Any]
    result: ResultFile
    pipeline: Pipeline


class BatchResults:
    """The batch's result rows so far: what was transferred, rewritten atomically on :meth:`save`."""

    def __init__(self, batch: CatalogBatch) -> None:
        self.batch = batch
        existing = read_parquet_if_exists(batch.results_path)
        self._rows: list[dict[str, Any]] = existing.to_pylist() if existing is not None else []
        self._lock = threading.Lock()

    @property
    def transferred(self) -> set[int]:
        """Pipelines whose images all have rows (the wait skips them)."""
        return {r["pipeline_id"] for r in self._rows if r["pipeline_id"] is not None}

    @property
    def manifest_rows(self) -> set[int]:
        return {r["manifest_row"] for r in self._rows}

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._rows += rows

    @property
    def uri(self) -> str:
        return uri_of(self.batch.results_path)

    def save(self) -> None:
        """Write the rows (the input sizes the plan knew filled in)."""
        sizes = dict(
            zip(
                self.batch.rows["manifest_row"].to_pylist(),
                self.batch.rows["input_bytes"].to_pylist(),
                strict=True,
            )
        )
        with self._lock:
            for row in self._rows:
                # input_bytes is known from the fingerprint's Content-Length (incremental runs) only.
                row.setdefault("input_bytes", sizes.get(row["manifest_row"]))
            table = manifests.conform_results(self._rows)
        manifests.write_parquet_atomic(table, self.batch.results_path)


def transfer_pipelines(
    batch: CatalogBatch, hook: LeapiHook, pipelines: list[Pipeline], results: BatchResults
) -> int:
    """Copy the results of finished ``pipelines`` into ``images`` and record their rows in ``results``
    (the batch's REJECTED images too, the first time); the number of images copied.

    :param pipelines: terminal pipelines of this batch, as just read (fresh temp URLs).
    """
    records = batch.submitted_records()
    done_rows = results.manifest_rows
    # (REJECTED submits, and anything else that has no pipeline: their rows are final at once)
    rows = [
        _row_for(r, batch.run, status=ResultStatus.ERROR.value, error=r["submit_error"])
        for r in records
        if r["pipeline_id"] is None and r["manifest_row"] not in done_rows
    ]
    members: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        if record["pipeline_id"] is not None:
            members.setdefault(record["pipeline_id"], []).append(record)
    jobs: list[_CopyJob] = []
    # The URL LEAPI was given -> the source_url recorded (differs for presigned s3:// sources).
    recorded_url_of: dict[str, str] = {}
    for pipeline in pipelines:
        recorded_url_of.update(_sent_urls(pipeline, members.get(pipeline.id, [])))
        failed_rows, ready = _pipeline_jobs(pipeline, members.get(pipeline.id, []), batch.run)
        rows += failed_rows
        jobs += ready
    for row in rows:
        _restore_uris(row, recorded_url_of)
    results.add(rows)
    copied = _copy_all(batch, hook, jobs, results, recorded_url_of)
    results.save()
    return copied


def _copy_all(
    batch: CatalogBatch,
    hook: LeapiHook,
    jobs: list[_CopyJob],
    results: BatchResults,
    recorded_url_of: dict[str, str],
) -> int:
    """Copy ``jobs`` in parallel; a pipeline's rows go to ``results`` once all its images are copied."""
    settings = batch.settings
    images_root = storage_path(settings.images, settings.aws_conn_id)
    outstanding: dict[int, list[dict[str, Any]]] = {}
    remaining: dict[int, int] = {}
    for job in jobs:
        remaining[job.pipeline.id] = remaining.get(job.pipeline.id, 0) + 1
    total_bytes, last_log, last_flush = 0, time.monotonic(), time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, settings.transfer_concurrency)) as pool:
        copies = pool.map(lambda job: _copy(hook, job, settings, images_root, batch.run), jobs)
        for done, (job, row) in enumerate(zip(jobs, copies, strict=True), start=1):
            _restore_uris(row, recorded_url_of)
            outstanding.setdefault(job.pipeline.id, []).append(row)
            remaining[job.pipeline.id] -= 1
            if not remaining[job.pipeline.id]:
                results.add(outstanding.pop(job.pipeline.id))
            total_bytes += row.get("output_bytes") or 0
            now = time.monotonic()
            if done % 100 == 0 or done == len(jobs) or now - last_log >= _PROGRESS_EVERY_S:
                log.info("Transferred %d/%d images, %.1f MB", done, len(jobs), total_bytes / 1e6)
                last_log = now
            if now - last_flush >= _FLUSH_EVERY_S:
                results.save()
                last_flush = now
    return len(jobs)


def _restore_uris(row: dict[str, Any], recorded_url_of: Mapping[str, str]) -> None:
    """LEAPI's reasons may quote the URL it was given: a credential for ``s3://`` sources."""
    if row.get("error"):
        row["error"] = restore_source_uris(row["error"], recorded_url_of)


def _sent_urls(pipeline: Pipeline, members: list[dict[str, Any]]) -> dict[str, str]:
    """``{URL the pipeline was given: source_url recorded}`` for the images of one pipeline."""
    sent = pipeline.source_urls
    return {
        sent[r["result_index"]]: r["source_url"]
        for r in members
        if r["result_index"] is not None and r["result_index"] < len(sent)
    }


def _row_for(record: Mapping[str, Any], run: CatalogRun, **values: Any) -> dict[str, Any]:
    base = {name: record.get(name) for name in _RECORD_COLUMNS}
    return base | {"dag_run_id": run.dag_run_id, "run_key": run.key, "run_date": run.run_date} | values


def _pipeline_jobs(
    pipeline: Pipeline, members: list[dict[str, Any]], run: CatalogRun
) -> tuple[list[dict[str, Any]], list[_CopyJob]]:
    """``(error rows, copy jobs)`` for the images one pipeline carried."""
    pipeline_id = pipeline.id
    timing = {
        "submitted_at": _utc(pipeline.submitted_at),
        "started_at": _utc(pipeline.started_at),
        "finished_at": _utc(pipeline.finished_at),
    }
    errors: list[dict[str, Any]] = []
    sent = pipeline.source_urls

    def sent_url(record: Mapping[str, Any]) -> str:
        """The URL this image was given to LEAPI as (a presigned one for s3://), which its errors quote."""
        position = record["result_index"]
        return sent[position] if position is not None and position < len(sent) else record["source_url"]

    if pipeline.status is not PipelineStatus.DONE:
        for record in members:
            if pipeline.status is PipelineStatus.ERROR:
                error = f"pipeline {pipeline_id} ERROR: {_pipeline_error_text(pipeline, sent_url(record))}"
            else:
                error = f"pipeline {pipeline_id} still PROCESSING when the wait ended; re-run to collect it"
            errors.append(_row_for(record, run, status=ResultStatus.ERROR.value, error=error, **timing))
        return errors, []
    files, failed = result_files(pipeline)
    by_index = {f.index: f for f in files}
    jobs: list[_CopyJob] = []
    for record in members:
        position = record["result_index"]
        result = pipeline.results[position] if position < len(pipeline.results) else None
        inputs = _input_facts(result)
        if position in by_index:
            jobs.append(_CopyJob(_row_for(record, run, **timing, **inputs), by_index[position], pipeline))
            continue
        reason = failed.get(position, "no result for this image")
        if reason.startswith("no output_object"):
            reason = _pipeline_error_text(pipeline, sent_url(record))
        errors.append(
            _row_for(record, run, status=ResultStatus.ERROR.value, error=reason, **timing, **inputs)
        )
    return errors, jobs


def _copy(
    hook: LeapiHook, job: _CopyJob, settings: CatalogSettings, images_root: ObjectStoragePath, run: CatalogRun
) -> dict[str, Any]:
    """Download one result (verified) to its key under ``images_root``; its finished result row."""
    row, result = job.row, job.result
    s3_like = images_root.protocol in ("s3", "s3a")
    try:
        with spooled_download(hook, result) as (verified, spool):
            key = object_key(
                settings.key_template,
                image_id=row["image_id"],
                preset=row["preset"],
                ext=result.file_name.rsplit(".", 1)[-1],
                sha256=verified.sha256,
                operation_hash=row["operation_hash"],
                pipeline_id=row["pipeline_id"],
                run_date=run.run_date,
            )
            target = images_root / key
            options = {"ContentType": verified.mime} if s3_like else {}
            if not s3_like:  # (on S3, mkdir would create a missing bucket: let the write fail instead)
                target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb", **options) as handle:
                shutil.copyfileobj(spool, handle, 1024 * 1024)
    except LeapiError as exc:
        return row | {"status": ResultStatus.ERROR.value, "error": str(exc)[:2000]}
    output = job.pipeline.results[result.index].output_object
    return row | {
        "status": ResultStatus.DONE.value,
        "output_width": verified.width,
        "output_height": verified.height,
        "output_format": verified.format,
        "output_mps": output.mps if output else None,
        "output_bytes": verified.byte_count,
        "output_uri": uri_of(target),
        "output_sha256": verified.sha256,
    }


def _input_facts(result: Any) -> dict[str, Any]:
    source = result.input_object if result is not None else None
    if source is None:
        return {}
    return {
        "input_width": source.width,
        "input_height": source.height,
        "input_format": source.format,
        "input_mps": source.mps,
    }
