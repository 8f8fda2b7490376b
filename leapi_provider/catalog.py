"""The catalog job: a Parquet manifest in, enhanced images in object storage, a result table out.

The DAGs in ``example_dags/example_leapi_manifest_fanout.py``, ``dags/catalog_reenhancement.py`` and
``dags/marketplace_feed_etl.py`` are wired from the tasks of this module::

    plan ─► [batch group, mapped: submit (pool "leapi") ─► wait (deferrable sensor) ─► transfer] ─► finalize

* **plan** reads and validates the manifest, drops images whose source and operation did not change since
  their last success (incremental runs), checks the account's credits, and cuts the rest into batches
  (:func:`leapi_provider.manifests.plan_batches`). Everything it decides is written to the run's folder,
  ``<results>/_runs/<run>/``; XCom carries only the batch files' URIs.
* **submit** posts one pipeline per group of up to ``urls_per_pipeline`` images and records each pipeline id
  in the run's folder right after the API accepts it. A re-run of the same DAG run (a cleared task or run, a
  retry) finds those records and submits nothing that was already accepted; every submit also carries a
  deterministic ``Idempotency-Key`` so that a server supporting it (``leapi-server``) dedupes the window
  between "accepted" and "recorded".
* **wait** is :class:`BatchWaitSensor`: one trigger watches every pipeline of the batch.
* **transfer** downloads each result (verified: complete, decodable, the size the API reported), writes it
  under ``images`` with the key template, and writes one result row per image. An image that failed (a
  broken source, an expired result) gets its own ``error`` row; the batch goes on.
* **finalize** assembles exactly one row per manifest row (``done``, ``error``, ``rejected_row``,
  ``skipped_unchanged`` or ``deferred_quota``), writes the result table atomically, a before/after contact
  sheet beside it and, for feeds, the export of final image URLs. If a batch task failed, its images get
  ``error`` rows, the table is still written, and the task then fails so that the run can be re-run.

Source change detection (incremental runs): a ``HEAD`` of each source URL; its ``ETag`` is the fingerprint,
else ``Last-Modified`` with ``Content-Length``, else (or with ``change_detection="content"``) the sha256 of
the bytes from a ``GET``. An image is skipped when its latest ``done`` row has the same source URL, the same
operation hash and the same fingerprint. A source that cannot be fingerprinted is always re-enhanced.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from leapi_provider import manifests
from leapi_provider.exceptions import LeapiError, LeapiRejectedError
from leapi_provider.manifests import RESULT_SCHEMA, ResultStatus

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from leapi_provider.hooks.leapi import LeapiHook
    from leapi_provider.models import Pipeline

log = logging.getLogger(__name__)

#: The Airflow pool every submit task runs in: size it to the account's rate limit (requests per minute
#: divided by the pipelines one submit task posts per minute; 4 is a safe start).
LEAPI_POOL = "leapi"

#: Fields a ``key_template`` may use (``str.format`` syntax; ``{sha256:.12}`` keeps 12 characters).
KEY_TEMPLATE_FIELDS = ("image_id", "preset", "ext", "sha256", "operation_hash", "pipeline_id", "run_date")
DEFAULT_KEY_TEMPLATE = "enhanced/{preset}/{image_id}.{ext}"
#: Feeds: the key changes with the content, so marketplaces and CDNs never serve a stale image.
FEED_KEY_TEMPLATE = "feed/{preset}/{image_id}/{sha256:.16}.{ext}"

CHANGE_DETECTION_MODES = ("headers", "content")
QUOTA_SHORTFALL_MODES = ("fail", "process_what_fits")

#: What a batch records per submitted image: the result table's own columns, plus the bookkeeping below.
_SUBMITTED_SCHEMA = pa.schema(
    [
        *(
            RESULT_SCHEMA.field(name)
            for name in (
                "manifest_row",
                "image_id",
                "source_url",
                "preset",
                "operation_json",
                "operation_hash",
                "source_fingerprint",
                "pipeline_id",
            )
        ),
        pa.field("result_index", pa.int32()),
        RESULT_SCHEMA.field("submitted_at"),
        #: Whether this run paid for it (False: reused after a re-run).
        pa.field("newly_submitted", pa.bool_()),
        pa.field("submit_error", pa.string()),
    ]
)


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogSettings:
    """What one catalog run needs, read from the DAG's params (see :func:`catalog_params`)."""

    manifest: str
    results: str
    images: str
    export: str | None = None
    leapi_conn_id: str = "leapi_default"
    aws_conn_id: str | None = "aws_default"
    urls_per_pipeline: int = manifests.DEFAULT_URLS_PER_PIPELINE
    max_batches: int = 1024
    preset_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    key_template: str = DEFAULT_KEY_TEMPLATE
    incremental: bool = False
    change_detection: str = "headers"
    on_quota_shortfall: str = "fail"
    quota_reserve: int = 0
    transfer_concurrency: int = 8
    contact_sheet_images: int = 6
    feed_url_template: str | None = None

    def __post_init__(self) -> None:
        check_key_template(self.key_template)
        if self.change_detection not in CHANGE_DETECTION_MODES:
            raise ValueError(f"change_detection must be one of {CHANGE_DETECTION_MODES}")
        if self.on_quota_shortfall not in QUOTA_SHORTFALL_MODES:
            raise ValueError(f"on_quota_shortfall must be one of {QUOTA_SHORTFALL_MODES}")
        manifests.normalize_preset_defaults(self.preset_defaults)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> CatalogSettings:
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in dict(params).items() if k in names}
        values.update(overrides)
        for name in ("export", "feed_url_template", "aws_conn_id"):
            if values.get(name) == "":
                values[name] = None
        return cls(**values)


def catalog_params(**defaults: Any) -> dict[str, Any]:
    """DAG ``params`` for a catalog DAG, with ``defaults`` overriding the built-in ones."""
    from airflow.sdk import Param

    base: dict[str, tuple[Any, dict[str, Any]]] = {
        "manifest": ("s3://my-catalog/manifests/latest/", {"type": "string", "description": "Manifest: Parquet file, folder or glob (any ObjectStoragePath URI)."}),
        "results": ("s3://my-catalog/leapi/results", {"type": "string", "description": "Result table root (partitioned run_date=/preset=)."}),
        "images": ("s3://my-catalog/leapi/images", {"type": "string", "description": "Where enhanced images are written."}),
        "export": ("", {"type": "string", "description": "Feed export folder (empty: no export)."}),
        "leapi_conn_id": ("leapi_default", {"type": "string"}),
        "aws_conn_id": ("aws_default", {"type": "string", "description": "Connection of s3:// locations."}),
        "urls_per_pipeline": (manifests.DEFAULT_URLS_PER_PIPELINE, {"type": "integer", "minimum": 1, "maximum": 100}),
        "max_batches": (1024, {"type": "integer", "minimum": 1, "description": "Mapped batches at most (also capped by [core] max_map_length)."}),
        "preset_defaults": ({}, {"type": "object", "description": "Per preset default options, e.g. {\"marketplace\": {\"width\": 1600}}; manifest rows override them."}),
        "key_template": (DEFAULT_KEY_TEMPLATE, {"type": "string", "description": f"Object key under images; fields: {', '.join(KEY_TEMPLATE_FIELDS)}."}),
        "incremental": (False, {"type": "boolean", "description": "Skip images whose source and operation did not change since their last success."}),
        "change_detection": ("headers", {"type": "string", "enum": list(CHANGE_DETECTION_MODES)}),
        "on_quota_shortfall": ("fail", {"type": "string", "enum": list(QUOTA_SHORTFALL_MODES), "description": "Not enough credits: fail before spending any, or process what fits and mark the rest deferred_quota."}),
        "quota_reserve": (0, {"type": "integer", "minimum": 0, "description": "Credits to leave untouched."}),
        "transfer_concurrency": (8, {"type": "integer", "minimum": 1, "maximum": 64}),
        "contact_sheet_images": (6, {"type": "integer", "minimum": 0, "maximum": 24}),
        "feed_url_template": ("", {"type": "string", "description": "Public URL of an image in the feed export, e.g. https://cdn.example.com/{key} (fields: key, bucket, uri). Empty: the object URI."}),
    }  # fmt: skip
    unknown = set(defaults) - set(base)
    if unknown:
        raise ValueError(f"unknown catalog params {sorted(unknown)}")
    return {name: Param(defaults.get(name, default), **schema) for name, (default, schema) in base.items()}


def check_key_template(template: str) -> None:
    """:raises ValueError: a field outside :data:`KEY_TEMPLATE_FIELDS`, or no ``{image_id}`` (keys would clash)."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = names - set(KEY_TEMPLATE_FIELDS)
    if unknown:
        raise ValueError(f"key_template uses unknown field(s) {sorted(unknown)}; use {KEY_TEMPLATE_FIELDS}")
    if "image_id" not in names:
        raise ValueError("key_template must contain {image_id}: every image needs its own key")


def safe_key_part(text: str) -> str:
    """``text`` usable as one object-key segment: URL-quoted, no ``/``, never ``.`` or ``..``."""
    quoted = quote(text, safe="-_.=@+")
    return quoted if quoted not in ("", ".", "..") else quoted.replace(".", "%2E") or "_"


# --------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------


def storage_path(location: str, conn_id: str | None) -> ObjectStoragePath:
    """An ``ObjectStoragePath`` for a URI (``s3://...``, ``file://...``) or a local path."""
    from airflow.sdk import ObjectStoragePath

    if "://" not in location:
        return ObjectStoragePath(f"file://{os.path.abspath(location)}")
    if location.startswith("file://"):
        return ObjectStoragePath(location)
    return ObjectStoragePath(location, conn_id=conn_id)


def uri_of(path: ObjectStoragePath) -> str:
    """The plain URI of a path (``s3://bucket/key``, ``file:///abs``): no connection id in it."""
    return path.fs.unstrip_protocol(path.path)


@dataclass(frozen=True)
class CatalogRun:
    """Who is running: the DAG run, its date, and the key its files are named by.

    ``key`` is derived from the DAG and the logical date (the run id when there is none): a run that is
    cleared and re-run, or re-triggered for the same logical date, finds the work of its earlier attempt
    (submitted pipelines, written files) and resumes it.
    """

    dag_id: str
    dag_run_id: str
    run_date: str
    key: str

    @classmethod
    def of(
        cls, dag_id: str, dag_run_id: str, logical_date: datetime | None, run_after: datetime | None = None
    ) -> CatalogRun:
        stamp = logical_date or run_after or datetime.now(UTC)
        identity = f"{dag_id}__{logical_date.isoformat()}" if logical_date else f"{dag_id}__{dag_run_id}"
        return cls(dag_id, dag_run_id, stamp.date().isoformat(), manifests.run_key(identity))


class RunFolder:
    """The files of one DAG run's work, under ``<results>/_runs/<run key>/`` (hidden from table readers)."""

    def __init__(self, settings: CatalogSettings, run: CatalogRun):
        self.settings = settings
        self.root = storage_path(settings.results, settings.aws_conn_id) / "_runs" / run.key

    def path(self, uri: str) -> ObjectStoragePath:
        return storage_path(uri, self.settings.aws_conn_id)

    @property
    def plan(self) -> ObjectStoragePath:
        return self.root / "plan.json"

    @property
    def carried(self) -> ObjectStoragePath:
        """Result rows decided by the plan itself: rejected, skipped, deferred."""
        return self.root / "carried.parquet"

    @property
    def attributes(self) -> ObjectStoragePath:
        return self.root / "attributes.parquet"

    def batch(self, index: int) -> ObjectStoragePath:
        return self.root / "batches" / f"batch-{index:05d}.parquet"

    def submitted(self, index: int) -> ObjectStoragePath:
        return self.root / "submitted" / f"batch-{index:05d}.parquet"

    def results(self, index: int) -> ObjectStoragePath:
        return self.root / "results" / f"batch-{index:05d}.parquet"


def batch_index_of(uri: str) -> int:
    match = re.search(r"batch-(\d+)\.parquet$", uri)
    if not match:
        raise ValueError(f"not a batch file: {uri}")
    return int(match.group(1))


# --------------------------------------------------------------------------------------------------
# Source fingerprints (incremental runs)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFingerprint:
    """How a source looked: ``etag:...``, ``last-modified:...;length:...`` or ``sha256:...`` (or ``None``)."""

    fingerprint: str | None
    content_length: int | None = None
    error: str | None = None
    #: The source answered 404 or 410: submitting it would only pay for a certain failure.
    gone: bool = False


async def _fingerprint(client: httpx.AsyncClient, url: str, mode: str) -> SourceFingerprint:
    try:
        if mode == "headers":
            head = await client.head(url)
            if head.status_code < 400:
                length = head.headers.get("Content-Length")
                size = int(length) if length and length.isdigit() else None
                if etag := head.headers.get("ETag"):
                    return SourceFingerprint(f"etag:{etag}", size)
                if modified := head.headers.get("Last-Modified"):
                    return SourceFingerprint(f"last-modified:{modified};length:{length or '?'}", size)
            # No validator (or HEAD refused): fall back to the content itself.
        digest = hashlib.sha256()
        size = 0
        async with client.stream("GET", url) as response:
            if response.status_code >= 400:
                status = response.status_code
                return SourceFingerprint(None, None, f"HTTP {status}", gone=status in (404, 410))
            async for chunk in response.aiter_bytes():
                digest.update(chunk)
                size += len(chunk)
        return SourceFingerprint(f"sha256:{digest.hexdigest()}", size)
    except httpx.HTTPError as exc:
        return SourceFingerprint(None, None, f"{type(exc).__name__}: {exc}")


def source_fingerprints(
    urls: Sequence[str], *, mode: str = "headers", concurrency: int = 32, timeout: float = 30.0
) -> dict[str, SourceFingerprint]:
    """Fingerprint each distinct URL (``HEAD``, falling back to hashing a ``GET``), ``concurrency`` at a time."""
    from leapi_provider.hooks.leapi import shared_tls_context

    distinct = list(dict.fromkeys(urls))

    async def run() -> list[SourceFingerprint]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        semaphore = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=True, limits=limits, verify=shared_tls_context()
        ) as client:

            async def one(url: str) -> SourceFingerprint:
                async with semaphore:
                    return await _fingerprint(client, url, mode)

            return await asyncio.gather(*(one(u) for u in distinct))

    return dict(zip(distinct, asyncio.run(run()), strict=True))


# --------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------


def _skipped_rows(candidates: pa.Table, previous: pa.Table, run: CatalogRun) -> pa.Table:
    """``skipped_unchanged`` result rows for ``candidates``, carrying their previous output forward."""
    carried = previous.select(
        [
            "image_id",
            "pipeline_id",
            "input_width",
            "input_height",
            "input_format",
            "input_mps",
            "input_bytes",
            "output_width",
            "output_height",
            "output_format",
            "output_mps",
            "output_bytes",
            "output_uri",
            "output_sha256",
            "submitted_at",
            "started_at",
            "finished_at",
        ]
    )
    rows = candidates.join(carried, "image_id", join_type="left outer")
    return status_rows(rows, ResultStatus.SKIPPED_UNCHANGED, run=run)


def status_rows(
    rows: pa.Table, status: ResultStatus, *, error: str | None = None, run: CatalogRun
) -> pa.Table:
    """Result rows with one ``status`` for plan-like ``rows`` (their other columns kept; ``error`` replaces
    theirs when given)."""
    n = rows.num_rows
    constants = {
        "status": status.value,
        "dag_run_id": run.dag_run_id,
        "run_key": run.key,
        "run_date": run.run_date,
    }
    if error is not None or "error" not in rows.column_names:
        constants["error"] = error
    table = rows.drop_columns([name for name in constants if name in rows.column_names])
    for name, value in constants.items():
        table = table.append_column(name, pa.array([value] * n, pa.string()))
    return manifests.conform_results(table)


def _rejects_rows(rejects: pa.Table) -> pa.Table:
    """The rejects table as result-like rows (short preset name where known, the reason as ``error``)."""
    return manifests.rejects_as_results(rejects, dag_run_id="", run_date="")


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns decoded (joins and concatenation want plain types)."""
    return table.cast(
        pa.schema(
            [
                pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f
                for f in table.schema
            ]
        )
    )


def check_quota(
    hook: LeapiHook, needed: int, *, reserve: int, on_shortfall: str
) -> tuple[int, dict[str, Any]]:
    """How many of ``needed`` credits may be spent now, from ``/v1/me/usage/``, before anything is spent.

    :raises AirflowFailException: not enough credits and ``on_shortfall == "fail"``.
    """
    from airflow.sdk.exceptions import AirflowFailException

    usage = hook.get_usage()
    remaining = usage.credits_remaining
    facts = {
        "credits_needed": needed,
        "credits_remaining": remaining,
        "quota": usage.quota,
        "used": usage.used,
    }
    if remaining is None:
        log.warning("LEAPI usage reports no remaining credits figure; the quota guard cannot check this run")
        return needed, facts
    available = max(remaining - reserve, 0)
    if needed <= available:
        return needed, facts
    if on_shortfall == "fail":
        raise AirflowFailException(
            f"This run needs {needed} credits but the LEAPI account has {remaining} left"
            + (f" ({reserve} reserved)" if reserve else "")
            + "; nothing was submitted. Raise the quota, shrink the manifest, or set on_quota_shortfall="
            "process_what_fits to enhance what fits and mark the rest deferred_quota."
        )
    log.warning(
        "Only %d of the %d credits this run needs are available: the rest is deferred", available, needed
    )
    return available, facts


def plan_run(settings: CatalogSettings, run: CatalogRun, *, max_map_length: int) -> dict[str, Any]:
    """Validate, diff (incremental), check the quota, plan batches; write it all to the run's folder.

    A re-run of the same run (same run key) reuses the plan its earlier attempt wrote, checking credits
    only for the images that attempt did not get accepted.

    :returns: ``{"run_dir", "batches": [URI, ...], "counts": {...}}`` (small: URIs and numbers).
    :raises ManifestError: unreadable manifest or no valid row.
    """
    folder = RunFolder(settings, run)
    if folder.plan.exists():
        return _resume_plan(settings, folder)
    manifest_location = storage_path(settings.manifest, settings.aws_conn_id)
    validation = manifests.validate_manifest(
        manifests.read_manifest(manifest_location), preset_defaults=settings.preset_defaults
    )
    validation.require_valid_rows(settings.manifest)
    log.info(
        "Manifest %s: %d rows, %d valid, rejects %s",
        settings.manifest,
        validation.total_rows,
        validation.valid.num_rows,
        validation.reject_counts,
    )
    carried = [status_rows(_rejects_rows(validation.rejects), ResultStatus.REJECTED_ROW, run=run)]
    valid = _plain(validation.valid)
    if "attributes" in valid.column_names:
        manifests.write_parquet_atomic(
            valid.select(["manifest_row", "image_id", "attributes"]), folder.attributes
        )
        valid = valid.drop_columns(["attributes"])
    fingerprints = pa.nulls(valid.num_rows, pa.string())
    input_bytes = pa.nulls(valid.num_rows, pa.int64())
    skipped = 0
    if settings.incremental:
        found = source_fingerprints(valid["source_url"].to_pylist(), mode=settings.change_detection)
        per_row = [found[url] for url in valid["source_url"].to_pylist()]
        fingerprints = pa.array([f.fingerprint for f in per_row], pa.string())
        input_bytes = pa.array([f.content_length for f in per_row], pa.int64())
        unreadable = sum(f.fingerprint is None and not f.gone for f in found.values())
        if unreadable:
            log.warning("%d source(s) could not be fingerprinted: they are re-enhanced", unreadable)
    valid = valid.append_column("source_fingerprint", fingerprints).append_column("input_bytes", input_bytes)
    gone_rows = 0
    if settings.incremental:
        # Sources that are gone (404/410) are not submitted: the failure is certain and would cost a credit.
        gone_urls = [url for url, f in found.items() if f.gone]
        if gone_urls:
            is_gone = pc.is_in(valid["source_url"], pa.array(gone_urls, pa.string()))
            gone = valid.filter(is_gone)
            gone_rows = gone.num_rows
            reasons = [
                f"source answered {found[u].error} at change detection; not submitted"
                for u in gone["source_url"].to_pylist()
            ]
            carried.append(
                status_rows(
                    gone.append_column("error", pa.array(reasons, pa.string())), ResultStatus.ERROR, run=run
                )
            )
            valid = valid.filter(pc.invert(is_gone))
    if settings.incremental:
        results_root = storage_path(settings.results, settings.aws_conn_id)
        done_before = manifests.latest_results(
            manifests.read_result_tables(
                results_root,
                # This run's own rows (from an earlier attempt of it) are not "before".
                filter=(pc.field("status") == ResultStatus.DONE.value)
                & (pc.field("run_key").is_null() | (pc.field("run_key") != run.key)),
            )
        )
        previous = done_before.select(["image_id", "source_url", "operation_hash", "source_fingerprint"])
        previous = previous.rename_columns(["image_id", "prev_url", "prev_hash", "prev_fingerprint"])
        joined = valid.join(previous, "image_id", join_type="left outer").sort_by("manifest_row")
        unchanged = pc.fill_null(
            pc.and_(
                pc.and_(
                    pc.equal(joined["source_url"], joined["prev_url"]),
                    pc.equal(joined["operation_hash"], joined["prev_hash"]),
                ),
                pc.equal(joined["source_fingerprint"], joined["prev_fingerprint"]),
            ),
            False,
        )
        joined = joined.drop_columns(["prev_url", "prev_hash", "prev_fingerprint"])
        unchanged_rows = joined.filter(unchanged)
        skipped = unchanged_rows.num_rows
        if skipped:
            carried.append(
                _skipped_rows(
                    unchanged_rows.drop_columns(["input_bytes"]),
                    done_before,
                    run,
                )
            )
        valid = joined.filter(pc.invert(unchanged))
    valid = valid.sort_by("manifest_row")

    from leapi_provider.hooks.leapi import LeapiHook

    with LeapiHook(settings.leapi_conn_id) as hook:
        allowed, usage = check_quota(
            hook, valid.num_rows, reserve=settings.quota_reserve, on_shortfall=settings.on_quota_shortfall
        )
    deferred = valid.slice(allowed)
    valid = valid.slice(0, allowed)
    if deferred.num_rows:
        carried.append(
            status_rows(
                deferred,
                ResultStatus.DEFERRED_QUOTA,
                error=f"not submitted: {usage['credits_remaining']} credits were left",
                run=run,
            )
        )
    max_batches = max(1, min(settings.max_batches, max_map_length))
    plan = manifests.plan_batches(
        valid, urls_per_pipeline=settings.urls_per_pipeline, max_batches=max_batches
    )

    def write_batch(item: tuple[int, pa.Table]) -> str:
        index, rows = item
        manifests.write_parquet_atomic(_plain(rows), folder.batch(index))
        return uri_of(folder.batch(index))

    # (up to max_map_length small files: written in parallel, object stores are latency bound)
    with ThreadPoolExecutor(max_workers=8) as pool:
        batch_uris = list(pool.map(write_batch, plan.batches()))
    manifests.write_parquet_atomic(pa.concat_tables(carried), folder.carried)
    counts = {
        "manifest_rows": validation.total_rows,
        "rejected": validation.rejects.num_rows,
        "skipped_unchanged": skipped,
        "source_gone": gone_rows,
        "deferred_quota": deferred.num_rows,
        "to_submit": valid.num_rows,
        "operations": plan.num_operations,
        "pipelines": plan.num_pipelines,
        "batches": plan.num_batches,
        "pipelines_per_batch": plan.pipelines_per_batch,
        **usage,
    }
    manifests.write_json_atomic(
        {
            "dag_run_id": run.dag_run_id,
            "run_key": run.key,
            "run_date": run.run_date,
            "batches": batch_uris,
            "counts": counts,
        },
        folder.plan,
    )
    log.info("Plan: %s", counts)
    return {"run_dir": uri_of(folder.root), "batches": batch_uris, "counts": counts}


def _resume_plan(settings: CatalogSettings, folder: RunFolder) -> dict[str, Any]:
    """The plan of an earlier attempt of this run, kept as it was so that its batches (and the submissions
    recorded for them) stay valid; only images not yet accepted need credits now.
    """
    from leapi_provider.hooks.leapi import LeapiHook

    plan = manifests.read_json(folder.plan)
    pending = 0
    for uri in plan["batches"]:
        index = batch_index_of(uri)
        planned = manifests.read_parquet(folder.batch(index)).num_rows
        recorded = _read_if_exists(folder.submitted(index))
        pending += planned - (recorded.num_rows if recorded is not None else 0)
    log.info(
        "Resuming the plan of an earlier attempt of this run (%d batches); %d image(s) not submitted yet",
        len(plan["batches"]),
        pending,
    )
    if pending:
        with LeapiHook(settings.leapi_conn_id) as hook:
            allowed, _ = check_quota(
                hook, pending, reserve=settings.quota_reserve, on_shortfall=settings.on_quota_shortfall
            )
        if allowed < pending:
            log.warning("%d image(s) may be refused by the API for lack of credits", pending - allowed)
    return {"run_dir": uri_of(folder.root), "batches": plan["batches"], "counts": plan["counts"]}


# --------------------------------------------------------------------------------------------------
# Submit
# --------------------------------------------------------------------------------------------------


def _read_if_exists(path: ObjectStoragePath) -> pa.Table | None:
    return manifests.read_parquet(path) if path.exists() else None


def submit_batch(settings: CatalogSettings, batch_uri: str, run: CatalogRun) -> dict[str, Any]:
    """Submit the pipelines of one batch, recording each id as soon as the API accepts it.

    Images already recorded by an earlier attempt of this run are not submitted again. A pipeline the API
    REJECTED (for another reason than its rate limit, which the hook waits out) marks its images with the
    reason and costs nothing; the batch goes on.

    :returns: ``{"submitted_uri", "pipeline_ids"}``.
    """
    from leapi_provider.hooks.leapi import LeapiHook, derive_idempotency_key
    from leapi_provider.models import PipelineRequest

    folder = RunFolder(settings, run)
    index = batch_index_of(batch_uri)
    batch = manifests.read_parquet(folder.path(batch_uri))
    record_path = folder.submitted(index)
    previous = _read_if_exists(record_path)
    # Submissions recorded by an earlier attempt of this run (accepted, or REJECTED: both final).
    records: dict[int, dict[str, Any]] = {}
    if previous is not None:
        records = {row["manifest_row"]: row for row in previous.to_pylist()}
    if records:
        log.info(
            "Batch %d: %d image(s) already submitted by an earlier attempt of this run", index, len(records)
        )

    def save() -> None:
        table = pa.Table.from_pylist(list(records.values()), schema=_SUBMITTED_SCHEMA)
        manifests.write_parquet_atomic(table, record_path)

    rows = batch.to_pylist()
    groups: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["pipeline_index"], []).append(row)
    with LeapiHook(settings.leapi_conn_id) as hook:
        for pipeline_index, members in groups.items():
            todo = [r for r in members if r["manifest_row"] not in records]
            if not todo:
                continue
            operation = json.loads(todo[0]["operation_json"])
            request = PipelineRequest.build([r["source_url"] for r in todo], [operation])
            key = derive_idempotency_key(request, run.dag_id, run.key, index, pipeline_index)
            now = datetime.now(UTC)
            base = {"submitted_at": now, "newly_submitted": True}
            try:
                pipeline_id = hook.submit_pipeline(request, idempotency_key=key)
            except LeapiRejectedError as exc:
                log.error("Batch %d pipeline %d REJECTED: %s", index, pipeline_index, exc.reason)
                for r in todo:
                    records[r["manifest_row"]] = _submitted_record(
                        r, None, None, base | {"newly_submitted": False}, f"REJECTED: {exc.reason}"
                    )
                save()
                continue
            except Exception:
                save()  # keep what was accepted before this failure
                raise
            for position, r in enumerate(todo):
                records[r["manifest_row"]] = _submitted_record(r, pipeline_id, position, base, None)
            save()
    if previous is None and not records:
        save()
    pipeline_ids = sorted({r["pipeline_id"] for r in records.values() if r["pipeline_id"] is not None})
    return {"submitted_uri": uri_of(record_path), "pipeline_ids": pipeline_ids}


def _submitted_record(
    row: Mapping[str, Any],
    pipeline_id: int | None,
    position: int | None,
    base: Mapping[str, Any],
    error: str | None,
) -> dict[str, Any]:
    return {
        **{name: row.get(name) for name in _SUBMITTED_SCHEMA.names},
        **base,
        "pipeline_id": pipeline_id,
        "result_index": position,
        "submit_error": error,
    }


# --------------------------------------------------------------------------------------------------
# Transfer
# --------------------------------------------------------------------------------------------------


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


def transfer_batch(settings: CatalogSettings, submitted_uri: str, run: CatalogRun) -> str | None:
    """Download each result of a batch into ``images`` and write the batch's result rows.

    Image-level failures (the API's per-image error, a pipeline in ERROR, an expired or corrupt result) become
    ``error`` rows; storage or network failures fail the task (a re-run downloads again, paying nothing).

    :returns: the URI of the batch's result rows (``None`` when the batch has nothing submitted).
    """
    from leapi_provider.hooks.leapi import LeapiHook
    from leapi_provider.models import PipelineStatus
    from leapi_provider.results import result_files, spooled_download

    folder = RunFolder(settings, run)
    path = folder.path(submitted_uri)
    if not path.exists():
        log.warning("No submissions recorded at %s: nothing to transfer", submitted_uri)
        return None
    records = manifests.read_parquet(path).to_pylist()
    images_root = storage_path(settings.images, settings.aws_conn_id)
    s3_like = images_root.protocol in ("s3", "s3a")
    out_rows: list[dict[str, Any]] = []
    jobs: list[tuple[dict[str, Any], Any, Pipeline]] = []

    def row_for(record: Mapping[str, Any], **values: Any) -> dict[str, Any]:
        base = {
            name: record.get(name)
            for name in ("image_id", "manifest_row", "source_url", "preset", "operation_json", "operation_hash",
                         "pipeline_id", "source_fingerprint", "submitted_at")
        }  # fmt: skip
        return base | {"dag_run_id": run.dag_run_id, "run_key": run.key, "run_date": run.run_date} | values

    by_pipeline: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        if record["pipeline_id"] is None:
            out_rows.append(row_for(record, status=ResultStatus.ERROR.value, error=record["submit_error"]))
        else:
            by_pipeline.setdefault(record["pipeline_id"], []).append(record)

    with LeapiHook(settings.leapi_conn_id) as hook:
        for pipeline_id, members in by_pipeline.items():
            pipeline = hook.get_pipeline(pipeline_id)
            timing = {
                "submitted_at": _utc(pipeline.submitted_at),
                "started_at": _utc(pipeline.started_at),
                "finished_at": _utc(pipeline.finished_at),
            }
            if pipeline.status is not PipelineStatus.DONE:
                reason = (
                    f"pipeline {pipeline_id} still PROCESSING when the wait ended; re-run to collect it"
                    if pipeline.status is PipelineStatus.PROCESSING
                    else f"pipeline {pipeline_id} ERROR: " + _pipeline_error_text(pipeline, None)
                )
                for record in members:
                    error = reason
                    if pipeline.status is PipelineStatus.ERROR:
                        error = f"pipeline {pipeline_id} ERROR: {_pipeline_error_text(pipeline, record['source_url'])}"
                    out_rows.append(row_for(record, status=ResultStatus.ERROR.value, error=error, **timing))
                continue
            files, failed = result_files(pipeline)
            by_index = {f.index: f for f in files}
            for record in members:
                position = record["result_index"]
                result = pipeline.results[position] if position < len(pipeline.results) else None
                inputs = _input_facts(result)
                if position in by_index:
                    jobs.append((row_for(record, **timing, **inputs), by_index[position], pipeline))
                else:
                    reason = failed.get(position, "no result for this image")
                    if reason.startswith("no output_object"):
                        reason = _pipeline_error_text(pipeline, record["source_url"])
                    out_rows.append(
                        row_for(record, status=ResultStatus.ERROR.value, error=reason, **timing, **inputs)
                    )

        def copy(job: tuple[dict[str, Any], Any, Pipeline]) -> dict[str, Any]:
            row, result, pipeline = job
            try:
                with spooled_download(hook, result) as (verified, spool):
                    ext = result.file_name.rsplit(".", 1)[-1]
                    key = object_key(
                        settings.key_template,
                        image_id=row["image_id"],
                        preset=row["preset"],
                        ext=ext,
                        sha256=verified.sha256,
                        operation_hash=row["operation_hash"],
                        pipeline_id=row["pipeline_id"],
                        run_date=run.run_date,
                    )
                    target = images_root / key
                    options = {"ContentType": verified.mime} if s3_like else {}
                    if (
                        not s3_like
                    ):  # (on S3, mkdir would create a missing bucket: let the write fail instead)
                        target.parent.mkdir(parents=True, exist_ok=True)
                    with target.open("wb", **options) as handle:
                        shutil.copyfileobj(spool, handle, 1024 * 1024)
            except LeapiError as exc:
                return row | {"status": ResultStatus.ERROR.value, "error": str(exc)[:2000]}
            output = pipeline.results[result.index].output_object
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

        with ThreadPoolExecutor(max_workers=max(1, settings.transfer_concurrency)) as pool:
            out_rows.extend(pool.map(copy, jobs))

    # input_bytes is known from the fingerprint's Content-Length (incremental runs) only.
    batch_rows = manifests.read_parquet(folder.batch(batch_index_of(submitted_uri)))
    sizes = dict(
        zip(batch_rows["manifest_row"].to_pylist(), batch_rows["input_bytes"].to_pylist(), strict=True)
    )
    for row in out_rows:
        row.setdefault("input_bytes", sizes.get(row["manifest_row"]))
    target = folder.results(batch_index_of(submitted_uri))
    manifests.write_parquet_atomic(manifests.conform_results(out_rows), target)
    return uri_of(target)


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


# --------------------------------------------------------------------------------------------------
# Finalize: result table, contact sheet, feed export
# --------------------------------------------------------------------------------------------------


def contact_sheet_png(pairs: Sequence[tuple[str, bytes, bytes]], *, cell: int = 240) -> bytes:
    """A PNG of before/after pairs side by side, each pair shown at the same size so detail compares.

    :param pairs: ``(label, source bytes, enhanced bytes)``.
    """
    from PIL import Image, ImageDraw, ImageOps

    shown = []
    for label, before_bytes, after_bytes in pairs:
        with Image.open(io.BytesIO(after_bytes)) as after, Image.open(io.BytesIO(before_bytes)) as before:
            # Same display box for both: the source is scaled up to the enhanced image's shape.
            after_rgb = ImageOps.contain(after.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS)
            before_rgb = before.convert("RGB").resize(after_rgb.size, Image.Resampling.BICUBIC)
        shown.append((label, before_rgb, after_rgb))
    label_height, pad = 16, 8
    columns = 2 if len(shown) > 3 else 1
    rows = [shown[i : i + columns] for i in range(0, len(shown), columns)]
    row_heights = [max(after.height for _, _, after in row) + label_height + pad for row in rows]
    pair_width = 2 * cell + pad
    sheet = Image.new("RGB", (columns * (pair_width + pad) + pad, sum(row_heights) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    y0 = pad
    for row, height in zip(rows, row_heights, strict=True):
        for column, (label, before, after) in enumerate(row):
            x0 = pad + column * (pair_width + pad)
            sheet.paste(before, (x0, y0))
            sheet.paste(after, (x0 + cell + pad, y0))
            draw.text((x0, y0 + after.height + 2), f"before | after   {label}"[:90], fill="black")
        y0 += height
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _contact_sheet(settings: CatalogSettings, done: pa.Table) -> bytes | None:
    count = settings.contact_sheet_images
    done = done.filter(pc.is_valid(done["output_uri"]))
    if count <= 0 or done.num_rows == 0:
        return None
    # A few images of each preset, in a stable order.
    picks = done.sort_by([("preset", "ascending"), ("image_id", "ascending")]).to_pylist()
    chosen: list[dict[str, Any]] = []
    for preset in sorted({r["preset"] for r in picks}):
        chosen += [r for r in picks if r["preset"] == preset][: max(1, count // 3)]
    chosen = chosen[:count]
    from leapi_provider.hooks.leapi import shared_tls_context

    pairs = []
    with httpx.Client(timeout=30, follow_redirects=True, verify=shared_tls_context()) as client:
        for row in chosen:
            try:
                before = client.get(row["source_url"])
                before.raise_for_status()
                after = storage_path(row["output_uri"], settings.aws_conn_id).read_bytes()
            except (httpx.HTTPError, OSError) as exc:
                log.warning("contact sheet: skipping %s (%s)", row["image_id"], exc)
                continue
            label = (
                f"{row['image_id']} {row['preset']}: {row['input_width']}x{row['input_height']}"
                f" -> {row['output_width']}x{row['output_height']}"
            )
            pairs.append((label, before.content, after))
    return contact_sheet_png(pairs) if pairs else None


def _export_feed(settings: CatalogSettings, table: pa.Table, folder: RunFolder, run: CatalogRun) -> list[str]:
    """Final image URL per ``image_id`` (``done`` and ``skipped_unchanged`` rows), as Parquet and CSV."""
    assert settings.export
    rows = table.filter(
        pc.and_(
            pc.is_in(
                table["status"], pa.array([ResultStatus.DONE.value, ResultStatus.SKIPPED_UNCHANGED.value])
            ),
            pc.is_valid(table["output_uri"]),
        )
    ).sort_by("manifest_row")
    attributes: dict[int, Any] = {}
    if folder.attributes.exists():
        extra = manifests.read_parquet(folder.attributes)
        attributes = dict(
            zip(extra["manifest_row"].to_pylist(), extra["attributes"].to_pylist(), strict=True)
        )
    images_root = uri_of(storage_path(settings.images, settings.aws_conn_id)).rstrip("/")
    feed = []
    for row in rows.to_pylist():
        uri = row["output_uri"]
        bucket, _, key = uri.split("://", 1)[-1].partition("/")
        url = (
            settings.feed_url_template.format(key=key, bucket=bucket, uri=uri)
            if settings.feed_url_template
            else uri
        )
        attrs = attributes.get(row["manifest_row"])
        feed.append(
            {
                "image_id": row["image_id"],
                "image_url": url,
                "preset": row["preset"],
                "width": row["output_width"],
                "height": row["output_height"],
                "format": row["output_format"],
                "bytes": row["output_bytes"],
                "sha256": row["output_sha256"],
                "status": row["status"],
                "enhanced_at": row["finished_at"],
                "attributes": json.dumps(dict(attrs) if isinstance(attrs, list) else attrs, default=str)
                if attrs is not None
                else None,
            }
        )
    log.info("Feed export: %d images (images under %s)", len(feed), images_root)
    schema = pa.schema(
        [("image_id", pa.string()), ("image_url", pa.string()), ("preset", pa.string()), ("width", pa.int32()),
         ("height", pa.int32()), ("format", pa.string()), ("bytes", pa.int64()), ("sha256", pa.string()),
         ("status", pa.string()), ("enhanced_at", pa.timestamp("us", tz="UTC")), ("attributes", pa.string())]
    )  # fmt: skip
    export_table = pa.Table.from_pylist(feed, schema=schema)
    csv_buffer = io.StringIO()
    writer = csv.DictWriter(csv_buffer, fieldnames=schema.names)
    writer.writeheader()
    for item in feed:
        writer.writerow(
            {
                k: ("" if v is None else v.isoformat() if isinstance(v, datetime) else v)
                for k, v in item.items()
            }
        )
    csv_bytes = csv_buffer.getvalue().encode()
    export_root = storage_path(settings.export, settings.aws_conn_id)
    written = []
    for target, stem in (
        (export_root / f"run_date={run.run_date}", f"feed-{run.key}"),
        (export_root / "latest", "feed"),
    ):
        written.append(manifests.write_parquet_atomic(export_table, target / f"{stem}.parquet"))
        written.append(manifests.write_bytes_atomic(csv_bytes, target / f"{stem}.csv"))
    return written


def finalize_run(settings: CatalogSettings, run: CatalogRun, *, export_feed: bool = False) -> dict[str, Any]:
    """Write the run's result table (one row per manifest row), its contact sheet and the feed export.

    Images of a batch whose tasks failed get ``error`` rows; after writing everything the task then fails
    (naming the batches), so the run shows as failed and a re-run resumes it.
    """
    # A failed finalize is not retried: re-running the failed batches (clear the run) is what helps.
    from airflow.sdk.exceptions import AirflowFailException

    folder = RunFolder(settings, run)
    if not folder.plan.exists():
        raise AirflowFailException(
            f"the plan of run {run.dag_run_id} is missing ({uri_of(folder.plan)}): the plan task failed"
        )
    plan = manifests.read_json(folder.plan)
    parts = [manifests.read_parquet(folder.carried)]
    incomplete: list[int] = []
    for batch_uri in plan["batches"]:
        index = batch_index_of(batch_uri)
        expected = manifests.read_parquet(folder.batch(index))
        results_path = folder.results(index)
        got = manifests.read_parquet(results_path) if results_path.exists() else manifests.empty_results()
        parts.append(got)
        missing = expected.filter(pc.invert(pc.is_in(expected["manifest_row"], got["manifest_row"])))
        if missing.num_rows:
            incomplete.append(index)
            parts.append(
                status_rows(
                    missing,
                    ResultStatus.ERROR,
                    error=f"batch {index} did not complete (a task of it failed); re-run the DAG run",
                    run=run,
                )
            )
    table = pa.concat_tables([manifests.conform_results(p) for p in parts]).sort_by("manifest_row")
    rows = table["manifest_row"].to_numpy()
    expected_rows = plan["counts"]["manifest_rows"]
    if len(rows) != expected_rows or len(np.unique(rows)) != expected_rows:
        raise AirflowFailException(
            f"result rows do not match the manifest: {len(rows)} rows for {expected_rows} manifest rows "
            f"({len(rows) - len(np.unique(rows))} duplicated)"
        )
    results_root = storage_path(settings.results, settings.aws_conn_id)
    written = manifests.write_result_table(
        table, results_root, dag_run_id=run.dag_run_id, run_date=run.run_date, file_key=run.key
    )
    done = table.filter(pc.equal(table["status"], ResultStatus.DONE.value))
    sheet = _contact_sheet(settings, done)
    sheet_uri = None
    if sheet is not None:
        target = results_root / f"run_date={run.run_date}" / f"_contact_sheet-{run.key}.png"
        sheet_uri = manifests.write_bytes_atomic(sheet, target)
    exported = _export_feed(settings, table, folder, run) if export_feed and settings.export else []
    pairs = Counter(zip(table["status"].to_pylist(), table["preset"].to_pylist(), strict=True))
    summary = {
        "rows": table.num_rows,
        "by_status": dict(sorted(Counter(table["status"].to_pylist()).items())),
        "by_status_and_preset": [
            [status, preset, n]
            for (status, preset), n in sorted(pairs.items(), key=lambda i: (i[0][0], i[0][1] or ""))
        ],
        "credits_used": _credits_used(folder, plan["batches"]),
    }
    result = {
        "result_files": written.files,
        "commit_marker": written.commit_marker,
        "contact_sheet": sheet_uri,
        "exports": exported,
        "summary": summary,
    }
    log.info("Catalog run finished: %s", json.dumps(result, default=str))
    if incomplete:
        raise AirflowFailException(
            f"{len(incomplete)} batch(es) did not complete ({incomplete[:10]}); their images are recorded as errors "
            f"in {written.commit_marker}. Clear and re-run this DAG run to resume: accepted pipelines are not "
            "submitted again."
        )
    return result


def _credits_used(folder: RunFolder, batch_uris: Iterable[str]) -> int:
    total = 0
    for uri in batch_uris:
        path = folder.submitted(batch_index_of(uri))
        if path.exists():
            records = manifests.read_parquet(path)
            total += int(pc.sum(pc.cast(records["newly_submitted"], pa.int64())).as_py() or 0)
    return total


# --------------------------------------------------------------------------------------------------
# Airflow glue: tasks and the batch wait sensor
# --------------------------------------------------------------------------------------------------


def _context_facts() -> tuple[CatalogSettings, CatalogRun]:
    from airflow.sdk import get_current_context

    context = get_current_context()
    dag_run = context["dag_run"]
    settings = CatalogSettings.from_params(context["params"])
    run = CatalogRun.of(dag_run.dag_id, dag_run.run_id, dag_run.logical_date, dag_run.run_after)
    return settings, run


#: XCom keys of the plan's counts and run folder (its return value is the list of batch URIs, mapped over).
XCOM_PLAN_COUNTS_KEY = "counts"
XCOM_RUN_DIR_KEY = "run_dir"


def plan_task_callable() -> list[str]:
    from airflow.sdk import conf, get_current_context

    settings, run = _context_facts()
    plan = plan_run(settings, run, max_map_length=conf.getint("core", "max_map_length"))
    ti = get_current_context()["ti"]
    ti.xcom_push(key=XCOM_PLAN_COUNTS_KEY, value=plan["counts"])
    ti.xcom_push(key=XCOM_RUN_DIR_KEY, value=plan["run_dir"])
    return plan["batches"]


def submit_task_callable(batch_uri: str) -> dict[str, Any]:
    settings, run = _context_facts()
    return submit_batch(settings, batch_uri, run)


def transfer_task_callable(batch_uri: str) -> str | None:
    settings, run = _context_facts()
    folder = RunFolder(settings, run)
    return transfer_batch(settings, uri_of(folder.submitted(batch_index_of(batch_uri))), run)


def finalize_task_callable(*, export_feed: bool = False) -> dict[str, Any]:
    from airflow.sdk import Asset, get_current_context

    settings, run = _context_facts()
    result = finalize_run(settings, run, export_feed=export_feed)
    context = get_current_context()
    task = context["task"]
    for outlet in getattr(task, "outlets", None) or []:
        if isinstance(outlet, Asset):
            context["outlet_events"][outlet].extra = {
                "results": settings.results,
                "run_date": run.run_date,
                "files": result["result_files"][:100],
                "rows": result["summary"]["rows"],
            }
    return result


def _batch_wait_sensor_class() -> type:
    from leapi_provider.sensors.leapi import LeapiPipelineSensor, wait_summary

    class BatchWaitSensor(LeapiPipelineSensor):
        """Waits for the pipelines of one batch (one trigger for all when deferrable); an empty batch
        (every pipeline REJECTED) has nothing to wait for. ERROR pipelines do not fail it: their images
        get ``error`` rows in the transfer step.
        """

        template_fields = (*LeapiPipelineSensor.template_fields, "leapi_conn_id")

        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("fail_on_error", False)
            super().__init__(**kwargs)

        def execute(self, context: Any) -> Any:
            if self.pipeline_ids in (None, [], (), "", "[]"):
                self.log.info("No pipeline to wait for in this batch")
                return wait_summary([], {}, [])
            return super().execute(context)

    return BatchWaitSensor


def add_catalog_tasks(
    *,
    export_feed: bool = False,
    outlets: Sequence[Any] = (),
    wait_timeout: float = 6 * 60 * 60,
    poll_interval: float = 15.0,
    deferrable: bool = True,
) -> dict[str, Any]:
    """Add the catalog tasks to the DAG being defined; returns them by name (``plan``, ``batch``, ``finalize``).

    The batches are a mapped task group, one per batch file: ``submit`` (pool :data:`LEAPI_POOL`) ->
    ``wait`` (deferrable, one trigger for the batch) -> ``transfer`` (runs whatever the wait did).
    """
    from airflow.sdk import task, task_group

    plan = task(task_id="plan")(plan_task_callable)()
    sensor_class = _batch_wait_sensor_class()

    @task_group(group_id="batch")
    def batch(batch_uri: str) -> Any:
        submitted = task(task_id="submit", pool=LEAPI_POOL, multiple_outputs=True)(submit_task_callable)(
            batch_uri
        )
        waited = sensor_class(
            task_id="wait",
            pipeline_ids=submitted["pipeline_ids"],
            leapi_conn_id="{{ params.leapi_conn_id }}",
            deferrable=deferrable,
            poke_interval=poll_interval,
            timeout=wait_timeout,
            mode="reschedule" if not deferrable else "poke",
        )
        transferred = task(task_id="transfer", trigger_rule="all_done")(transfer_task_callable)(batch_uri)
        waited >> transferred
        return transferred

    batches = batch.expand(batch_uri=plan)
    finalize = task(task_id="finalize", trigger_rule="all_done", outlets=list(outlets))(
        finalize_task_callable
    )(export_feed=export_feed)
    batches >> finalize
    return {"plan": plan, "batch": batches, "finalize": finalize}
