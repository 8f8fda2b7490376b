"""The transfer step: each result of a batch, downloaded (verified) into ``images``, and the batch's rows.

An image that failed (a broken source, a pipeline in ERROR, an expired or corrupt result) gets its own
``error`` row; the batch goes on. Storage or network failures fail the task: a re-run downloads again,
paying nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from leapi_provider import manifests
from leapi_provider.catalog.settings import CatalogSettings, safe_key_part
from leapi_provider.catalog.sources import restore_source_uris
from leapi_provider.catalog.storage import CatalogRun, RunFolder, batch_index_of, storage_path, uri_of
from leapi_provider.exceptions import LeapiError
from leapi_provider.manifests import ResultStatus

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from leapi.models import Pipeline
    from leapi_provider.hooks.leapi import LeapiHook
    from leapi_provider.results import ResultFile

log = logging.getLogger(__name__)

#: A long transfer logs its progress (``n/N images, x MB``) every 100 images and at least this often.
_PROGRESS_EVERY_S = 30.0

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


def transfer_batch(settings: CatalogSettings, submitted_uri: str, run: CatalogRun) -> str | None:
    """Download each result of a batch into ``images`` and write the batch's result rows.

    :param settings: the run's settings.
    :param submitted_uri: the batch's submission records (written by the submit step).
    :param run: the run's identity.
    :returns: the URI of the batch's result rows (``None`` when the batch has nothing submitted).
    """
    from leapi_provider.hooks.leapi import LeapiHook

    folder = RunFolder(settings, run)
    path = folder.path(submitted_uri)
    if not path.exists():
        log.warning("No submissions recorded at %s: nothing to transfer", submitted_uri)
        return None
    records = manifests.read_parquet(path).to_pylist()
    images_root = storage_path(settings.images, settings.aws_conn_id)
    out_rows: list[dict[str, Any]] = []
    by_pipeline: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        if record["pipeline_id"] is None:
            out_rows.append(
                _row_for(record, run, status=ResultStatus.ERROR.value, error=record["submit_error"])
            )
        else:
            by_pipeline.setdefault(record["pipeline_id"], []).append(record)

    # The URL LEAPI was given -> the source_url recorded (differs for presigned s3:// sources).
    recorded_url_of: dict[str, str] = {}
    with LeapiHook(settings.leapi_conn_id) as hook:
        jobs: list[_CopyJob] = []
        for pipeline_id, members in by_pipeline.items():
            pipeline = hook.get_pipeline(pipeline_id)
            recorded_url_of.update(_sent_urls(pipeline, members))
            failed_rows, ready = _pipeline_jobs(pipeline, members, run)
            out_rows += failed_rows
            jobs += ready
        total_bytes = 0
        last_log = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, settings.transfer_concurrency)) as pool:
            for done, row in enumerate(
                pool.map(lambda job: _copy(hook, job, settings, images_root, run), jobs), start=1
            ):
                out_rows.append(row)
                total_bytes += row.get("output_bytes") or 0
                now = time.monotonic()
                if done % 100 == 0 or done == len(jobs) or now - last_log >= _PROGRESS_EVERY_S:
                    log.info("Transferred %d/%d images, %.1f MB", done, len(jobs), total_bytes / 1e6)
                    last_log = now

    # input_bytes is known from the fingerprint's Content-Length (incremental runs) only.
    batch_rows = manifests.read_parquet(folder.batch(batch_index_of(submitted_uri)))
    sizes = dict(
        zip(batch_rows["manifest_row"].to_pylist(), batch_rows["input_bytes"].to_pylist(), strict=True)
    )
    for row in out_rows:
        row.setdefault("input_bytes", sizes.get(row["manifest_row"]))
        if row.get("error"):  # (LEAPI's reasons may quote the URL it was given: a credential for s3://)
            row["error"] = restore_source_uris(row["error"], recorded_url_of)
    target = folder.results(batch_index_of(submitted_uri))
    manifests.write_parquet_atomic(manifests.conform_results(out_rows), target)
    return uri_of(target)


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
    from leapi.models import PipelineStatus
    from leapi_provider.results import result_files

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
    from leapi_provider.results import spooled_download

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
