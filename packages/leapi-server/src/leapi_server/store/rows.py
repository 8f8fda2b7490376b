"""What the store's tables hand out: plain frozen records, never database rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from leapi.models import PipelineStatus
from leapi_server.store.schema import DeliveryState, TaskState


@dataclass(frozen=True, kw_only=True)
class PipelineRow:
    id: int
    owner: str
    status: PipelineStatus
    request: dict[str, Any]
    notify_url: str | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None


@dataclass(frozen=True, kw_only=True)
class TaskRow:
    pipeline_id: int
    index: int
    url: str
    state: TaskState
    attempts: int
    finished_at: float | None
    input: dict[str, Any] | None
    output: dict[str, Any] | None
    output_key: str | None
    expires_at: float | None
    error: str | None


@dataclass(frozen=True, kw_only=True)
class PipelineCreated:
    """``accept`` wrote the pipeline, its tasks and its charge (or found the idempotent original)."""

    pipeline_id: int
    #: True when an Idempotency-Key matched an earlier request: nothing new was created or charged.
    replayed: bool = False


@dataclass(frozen=True, kw_only=True)
class ClaimedTask:
    pipeline_id: int
    index: int
    url: str
    operations: tuple[dict[str, Any], ...]
    attempts: int


@dataclass(frozen=True, kw_only=True)
class Delivery:
    id: str
    pipeline_id: int
    url: str
    body: bytes | None
    attempts: int


@dataclass(frozen=True, kw_only=True)
class DeliveryAttempt:
    attempt: int
    started_at: float
    duration_s: float
    status_code: int | None
    error: str | None


@dataclass(frozen=True, kw_only=True)
class DeliveryRecord:
    id: str
    url: str
    state: DeliveryState
    attempts: list[DeliveryAttempt]
    next_attempt_at: float | None


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def pipeline_row(row: Any) -> PipelineRow:
    return PipelineRow(
        id=row["id"],
        owner=row["owner"],
        status=PipelineStatus(row["status"]),
        request=json.loads(row["request"]),
        notify_url=row["notify_url"],
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
    )


def task_row(row: Any) -> TaskRow:
    return TaskRow(
        pipeline_id=row["pipeline_id"],
        index=row["idx"],
        url=row["url"],
        state=TaskState(row["state"]),
        attempts=row["attempts"],
        finished_at=row["finished_at"],
        input=_loads(row["input"]),
        output=_loads(row["output"]),
        output_key=row["output_key"],
        expires_at=row["expires_at"],
        error=row["error"],
    )
