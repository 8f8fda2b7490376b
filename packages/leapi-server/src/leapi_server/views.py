"""Rendering stored rows into the documented JSON shapes (the GET example of the LEAPI docs).

Timestamps are emitted as the docs show them: ISO 8601 without offset (``2021-04-26T13:46:01.358819``);
they are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from leapi.models import PipelineStatus, SubmitStatus
from leapi_server.config import ServerConfig
from leapi_server.store import DeliveryRecord, PipelineRow, TaskRow, TaskState
from leapi_server.tempstore import TempStore


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _megapixels(width: int, height: int) -> float:
    return round(width * height / 1e6, 2)


def _source_names(url: str) -> tuple[str | None, str | None]:
    """(basename, filename) of the source, from its URL path (``burger``, ``burger.jpg``)."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not name:
        return None, None
    return (name.rsplit(".", 1)[0] if "." in name else name), name


def input_object(task: TaskRow) -> dict[str, Any]:
    basename, filename = _source_names(task.url)
    meta = task.input or {}
    width, height = meta.get("width"), meta.get("height")
    return {
        "ext": meta.get("ext"),
        "mps": _megapixels(width, height) if width and height else None,
        "url": task.url,
        "mime": meta.get("mime"),
        "size": [width, height] if width and height else None,
        "width": width,
        "format": meta.get("format"),
        "height": height,
        "s3_key": None,
        "tmp_url": None,
        "basename": basename,
        "filename": filename,
        "interpret": meta.get("interpret"),
        "s3_bucket": None,
        "s3_key_prefix": "",
    }


def output_object(
    task: TaskRow, *, temp_store: TempStore, base_url: str, with_tmp_url: bool
) -> dict[str, Any]:
    meta = task.output or {}
    key = task.output_key or ""
    filename = key.rsplit("/", 1)[-1]
    width, height = meta["width"], meta["height"]
    tmp_url = None
    if with_tmp_url and key and task.expires_at is not None:
        tmp_url = temp_store.url(base_url, key, int(task.expires_at))
    bucket, s3_key, prefix = temp_store.location(key)
    return {
        "ext": meta.get("ext"),
        "mps": _megapixels(width, height),
        "url": None,
        "mime": meta.get("mime"),
        "size": [width, height],
        "width": width,
        "format": meta.get("format"),
        "height": height,
        "s3_key": s3_key,
        "tmp_url": tmp_url,
        "basename": filename.rsplit(".", 1)[0],
        "filename": filename,
        "interpret": meta.get("interpret"),
        "s3_bucket": bucket,
        "s3_key_prefix": prefix,
    }


def render_pipeline(
    row: PipelineRow,
    tasks: list[TaskRow],
    *,
    temp_store: TempStore,
    base_url: str,
    result_errors: bool = True,
) -> dict[str, Any]:
    """The ``pipeline`` object of ``GET /v1/pipeline/{id}``.

    ``results`` lists the images finished so far in source order; once the pipeline is DONE or ERROR
    it has exactly one entry per source URL. A failed image has ``output_object: null`` and ``error``
    (extension, left out when ``result_errors`` is false); ``errors`` has one ``"<url>: <reason>"`` line
    per failed image.
    """
    with_tmp_url = bool(row.request.get("sink", {}).get("temp_store", True))
    results = []
    errors = []
    for task in tasks:
        if task.state not in (TaskState.DONE, TaskState.FAILED):
            continue
        succeeded = task.state is TaskState.DONE
        result: dict[str, Any] = {
            "created_at": iso(task.finished_at),
            "input_object": input_object(task),
            "output_object": output_object(
                task, temp_store=temp_store, base_url=base_url, with_tmp_url=with_tmp_url
            )
            if succeeded
            else None,
        }
        if result_errors:
            result["error"] = None if succeeded else task.error
        results.append(result)
        if not succeeded:
            errors.append(f"{task.url}: {task.error}")
    return {
        "id": row.id,
        "sink": row.request.get("sink", {"temp_store": True}),
        "error": row.error,
        "errors": errors,
        "source": {"http": {"url": [t.url for t in tasks]}},
        "status": row.status.value,
        "results": results,
        "notify_url": row.notify_url,
        "operations": row.request["operations"],
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "submitted_at": iso(row.submitted_at),
    }


def render_accepted(row: PipelineRow, urls: list[str]) -> dict[str, Any]:
    """The ACCEPTED answer: the pipeline as it was when accepted (also for an idempotent replay)."""
    return {
        "status": SubmitStatus.ACCEPTED.value,
        "pipeline": {
            "id": row.id,
            "sink": row.request.get("sink", {"temp_store": True}),
            "error": None,
            "errors": [],
            "source": {"http": {"url": urls}},
            "status": PipelineStatus.PROCESSING.value,
            "results": [],
            "notify_url": row.notify_url,
            "operations": row.request["operations"],
            "started_at": None,
            "finished_at": None,
            "submitted_at": iso(row.submitted_at),
        },
    }


def render_deliveries(deliveries: list[DeliveryRecord]) -> list[dict[str, Any]]:
    """The ``deliveries`` of ``GET /v1/pipeline/{id}/webhooks`` (extension), each with every attempt."""
    return [
        {
            "id": d.id,
            "url": d.url,
            "state": d.state.value,
            "next_attempt_at": iso(d.next_attempt_at),
            "attempts": [
                {
                    "attempt": a.attempt,
                    "started_at": iso(a.started_at),
                    "duration_s": round(a.duration_s, 4),
                    "status_code": a.status_code,
                    "error": a.error,
                }
                for a in d.attempts
            ],
        }
        for d in deliveries
    ]


def docs_only_usage(
    *, used: int, quota: int | None, start: float, end: float, config: ServerConfig
) -> dict[str, Any]:
    """The usage body of ``--compat docs``: the same figures in a shape the client does not know.

    The docs name ``GET /v1/me/usage/`` but show no body, so a client must not depend on one: this shape
    shares no field name with the default body (or with the spellings ``leapi.models.Usage`` accepts).
    """
    return {
        "account": {
            "images_processed_this_month": used,
            "monthly_image_allowance": quota,
            "billing_period": {"from": iso(start), "until": iso(end)},
        },
        "limits": {"requests_per_minute": config.rate_limit_per_minute or None},
    }
