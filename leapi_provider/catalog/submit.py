"""The submit step: one pipeline per group of up to ``urls_per_pipeline`` images of a batch.

Each pipeline id is recorded in the run's folder right after the API accepts it. A re-run of the same DAG
run (a cleared task or run, a retry) finds those records and submits nothing that was already accepted;
every submit also carries a deterministic ``Idempotency-Key`` so that a server supporting it
(``leapi-server``) dedupes the window between "accepted" and "recorded" (against a server without that
extension, a worker dying in that instant costs the image a second credit).

``s3://`` sources are presigned here, right before each submit (:mod:`leapi_provider.catalog.sources`):
a resubmission presigns again, and the records keep the ``s3://`` URI, never the presigned URL.

Submits refused for the API's rate limit are waited out by the hook (a time budget, and a limiter every
batch in the worker shares); the time each batch waited is logged and returned.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from leapi_provider import manifests
from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.catalog.storage import (
    CatalogRun,
    RunFolder,
    batch_index_of,
    read_parquet_if_exists,
    uri_of,
)
from leapi_provider.exceptions import LeapiRejectedError
from leapi_provider.manifests import RESULT_SCHEMA

log = logging.getLogger(__name__)

#: What a batch records per submitted image: the result table's own columns, plus the bookkeeping below.
SUBMITTED_SCHEMA = pa.schema(
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


def submit_batch(settings: CatalogSettings, batch_uri: str, run: CatalogRun) -> dict[str, Any]:
    """Submit the pipelines of one batch, recording each id as soon as the API accepts it.

    Images already recorded by an earlier attempt of this run are not submitted again. A pipeline the API
    REJECTED (for another reason than its rate limit, which the hook waits out) marks its images with the
    reason and costs nothing; the batch goes on.

    :returns: ``{"submitted_uri", "pipeline_ids", "rate_limit_wait_s"}``.
    """
    from leapi.models import PipelineRequest
    from leapi_provider.catalog.sources import PresignedUrls, restore_source_uris
    from leapi_provider.hooks.leapi import LeapiHook, derive_idempotency_key

    folder = RunFolder(settings, run)
    index = batch_index_of(batch_uri)
    batch = manifests.read_parquet(folder.path(batch_uri))
    record_path = folder.submitted(index)
    previous = read_parquet_if_exists(record_path)
    # Submissions recorded by an earlier attempt of this run (accepted, or REJECTED: both final).
    records: dict[int, dict[str, Any]] = {}
    if previous is not None:
        records = {row["manifest_row"]: row for row in previous.to_pylist()}
    if records:
        log.info(
            "Batch %d: %d image(s) already submitted by an earlier attempt of this run", index, len(records)
        )

    def save() -> None:
        table = pa.Table.from_pylist(list(records.values()), schema=SUBMITTED_SCHEMA)
        manifests.write_parquet_atomic(table, record_path)

    rows = batch.to_pylist()
    groups: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["pipeline_index"], []).append(row)
    presigned = PresignedUrls(aws_conn_id=settings.aws_conn_id, expires_in=settings.presign_expires_in)
    submits = 0
    rate_limit_wait_s = 0.0
    with LeapiHook(settings.leapi_conn_id) as hook:
        for pipeline_index, members in groups.items():
            todo = [r for r in members if r["manifest_row"] not in records]
            if not todo:
                continue
            submits += 1
            operation = json.loads(todo[0]["operation_json"])
            sources = [r["source_url"] for r in todo]
            request = PipelineRequest.build(presigned.urls_for(sources), [operation])
            # The key names what is asked (the s3:// URIs), not this attempt's signatures.
            stable_request = PipelineRequest.build(sources, [operation])
            key = derive_idempotency_key(stable_request, run.dag_id, run.key, index, pipeline_index)
            now = datetime.now(UTC)
            base = {"submitted_at": now, "newly_submitted": True}
            try:
                pipeline_id = hook.submit_pipeline(request, idempotency_key=key)
            except LeapiRejectedError as exc:
                reason = restore_source_uris(str(exc.reason), presigned.uri_of)
                log.error("Batch %d pipeline %d REJECTED: %s", index, pipeline_index, reason)
                for r in todo:
                    records[r["manifest_row"]] = _submitted_record(
                        r, None, None, base | {"newly_submitted": False}, f"REJECTED: {reason}"
                    )
                save()
                continue
            except Exception:
                save()  # keep what was accepted before this failure
                raise
            for position, r in enumerate(todo):
                records[r["manifest_row"]] = _submitted_record(r, pipeline_id, position, base, None)
            save()
        if submits:
            rate_limit_wait_s = hook.get_conn().rate_limit_waited_s
            log.info(
                "Batch %d: %d submit(s); waited %.1fs on the LEAPI rate limit",
                index,
                submits,
                rate_limit_wait_s,
            )
    if presigned.uri_of:
        log.info(
            "Batch %d: %d s3:// source(s) presigned for %d s (the records keep the s3:// URIs)",
            index,
            len(presigned.uri_of),
            settings.presign_expires_in,
        )
    if previous is None and not records:
        save()
    pipeline_ids = sorted({r["pipeline_id"] for r in records.values() if r["pipeline_id"] is not None})
    return {
        "submitted_uri": uri_of(record_path),
        "pipeline_ids": pipeline_ids,
        "rate_limit_wait_s": round(rate_limit_wait_s, 1),
    }


def _submitted_record(
    row: Mapping[str, Any],
    pipeline_id: int | None,
    position: int | None,
    base: Mapping[str, Any],
    error: str | None,
) -> dict[str, Any]:
    return {
        **{name: row.get(name) for name in SUBMITTED_SCHEMA.names},
        **base,
        "pipeline_id": pipeline_id,
        "result_index": position,
        "submit_error": error,
    }
