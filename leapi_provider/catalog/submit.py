"""The submit step: one pipeline per group of up to ``urls_per_pipeline`` images of a batch.

Each pipeline id is recorded in the run's folder right after the API accepts it. A re-run of the same DAG
run (a cleared task or run, a retry, a resume after a deferral) finds those records and submits nothing
that was already accepted; every submit also carries a deterministic ``Idempotency-Key`` so that a
server supporting it (``leapi-server``) dedupes the window between "accepted" and "recorded" (against a
server without that extension, a worker dying in that instant costs the image a second credit).

``s3://`` sources are presigned here, right before each submit (:mod:`leapi_provider.catalog.sources`):
a resubmission presigns again, and the records keep the ``s3://`` URI, never the presigned URL.

Rate limits: the hook's limiter paces the submits. When the next slot is further away than the caller
wants to wait in a worker (``max_wait``), the step stops and says when to resume
(:attr:`SubmitOutcome.resume_at`): the batch task defers until then instead of holding its slot.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from leapi.errors import LeapiRateLimitError, LeapiRejectedError
from leapi.idempotency import derive_idempotency_key
from leapi.models import PipelineRequest
from leapi_provider.catalog.batch import SUBMITTED_SCHEMA, CatalogBatch, pipeline_ids_of
from leapi_provider.catalog.sources import PresignedUrls, restore_source_uris
from leapi_provider.hooks.leapi import LeapiHook

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmitOutcome:
    """What the submit step leaves for the wait.

    :param pipeline_ids: every accepted pipeline of the batch so far, in submission order.
    :param resume_at: wall-clock time to resume submitting (the rate limit's next slot), when the step
        stopped before the end; ``None`` when every image of the batch is submitted (or REJECTED).
    """

    pipeline_ids: list[int]
    resume_at: float | None = None


def submit_batch(
    batch: CatalogBatch, hook: LeapiHook, *, max_wait: float | None = None, notify_url: str | None = None
) -> SubmitOutcome:
    """Submit the pipelines of ``batch`` not accepted yet, recording each id as soon as the API accepts it.

    A pipeline the API REJECTED (for another reason than its rate limit) marks its images with the reason
    and costs nothing; the batch goes on.

    :param max_wait: seconds a submit may wait for the account's rate limit in this process; past it, the
        step stops and :attr:`SubmitOutcome.resume_at` says when the next slot is (the hook's
        ``rate_limit_budget`` should be the same, so that a refused submit is not retried past it either).
        ``None``: wait as long as the hook's budget allows.
    :param notify_url: the webhook URL every pipeline carries (the batch task's channel: the same on every
        try, so the idempotency keys, which cover it, do not change).
    """
    records = batch.submissions
    if records.by_row:
        log.info(
            "%s: %d image(s) already submitted by an earlier attempt of this run", batch, len(records.by_row)
        )
    groups: dict[int, list[dict[str, Any]]] = {}
    for row in batch.rows.to_pylist():
        if row["manifest_row"] not in records.by_row:
            groups.setdefault(row["pipeline_index"], []).append(row)
    settings = batch.settings
    presigned = PresignedUrls(aws_conn_id=settings.aws_conn_id, expires_in=settings.presign_expires_in)
    limiter = hook.get_conn().account_limiter
    waited_before = hook.get_conn().rate_limit_waited_s
    submits, resume_at = 0, None
    for pipeline_index, todo in groups.items():
        if max_wait is not None and limiter.next_wait() > max_wait:
            resume_at = time.time() + limiter.next_wait()
            break
        try:
            pipeline_id = _submit(batch, hook, presigned, pipeline_index, todo, notify_url)
        except LeapiRejectedError as exc:
            if isinstance(exc, LeapiRateLimitError) and max_wait is not None:
                resume_at = time.time() + max(limiter.next_wait(), 1.0)
                break
            if exc.rate_limited:
                raise
            reason = restore_source_uris(str(exc.reason), presigned.uri_of)
            log.error("%s pipeline %d REJECTED: %s", batch, pipeline_index, reason)
            records.add(_submitted_records(todo, None, f"REJECTED: {reason}"))
            continue
        submits += 1
        records.add(_submitted_records(todo, pipeline_id, None))
    records.mark_empty()
    _log_submits(batch, hook, presigned, submits, waited_before, resume_at)
    return SubmitOutcome(pipeline_ids_of(list(records.by_row.values())), resume_at)


def _submit(
    batch: CatalogBatch,
    hook: LeapiHook,
    presigned: PresignedUrls,
    pipeline_index: int,
    todo: list[dict[str, Any]],
    notify_url: str | None = None,
) -> int:
    """Submit one pipeline of ``todo``'s images; its id."""
    operation = json.loads(todo[0]["operation_json"])
    sources = [r["source_url"] for r in todo]
    request = PipelineRequest.build(presigned.urls_for(sources), [operation], notify_url=notify_url)
    # The key names what is asked (the s3:// URIs), not this attempt's signatures.
    stable_request = PipelineRequest.build(sources, [operation], notify_url=notify_url)
    run = batch.run
    key = derive_idempotency_key(stable_request, run.dag_id, run.key, batch.index, pipeline_index)
    return hook.submit_pipeline(request, idempotency_key=key)


def _log_submits(
    batch: CatalogBatch,
    hook: LeapiHook,
    presigned: PresignedUrls,
    submits: int,
    waited_before: float,
    resume_at: float | None,
) -> None:
    if submits:
        client = hook.get_conn()
        log.info(
            "%s: %d submit(s); waited %.1fs on the LEAPI rate limit (longest single wait %.1fs)",
            batch,
            submits,
            client.rate_limit_waited_s - waited_before,
            client.rate_limit_longest_wait_s,
        )
    if resume_at is not None:
        log.info(
            "%s: the LEAPI rate limit's next slot is %.0fs away: submitting resumes then",
            batch,
            resume_at - time.time(),
        )
    if presigned.uri_of:
        log.info(
            "%s: %d s3:// source(s) presigned for %d s (the records keep the s3:// URIs)",
            batch,
            len(presigned.uri_of),
            batch.settings.presign_expires_in,
        )


def _submitted_records(
    rows: list[dict[str, Any]], pipeline_id: int | None, error: str | None
) -> list[dict[str, Any]]:
    """The records of one group of images: submitted as ``pipeline_id`` (their positions in it), or not
    (``None``, with the ``error``)."""
    base = {"submitted_at": datetime.now(UTC), "newly_submitted": pipeline_id is not None}
    return [
        {
            **{name: row.get(name) for name in SUBMITTED_SCHEMA.names},
            **base,
            "pipeline_id": pipeline_id,
            "result_index": position if pipeline_id is not None else None,
            "submit_error": error,
        }
        for position, row in enumerate(rows)
    ]
