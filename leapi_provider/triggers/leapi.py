"""Trigger that waits, in the triggerer, for one or many LEAPI pipelines to finish.

One trigger may watch a whole fan-out batch: its ids are polled concurrently (bounded), each poll round
spaced by an adaptive interval, and one small event is yielded when every id is terminal, when polling
fails for good, or at the wall-clock ``end_time``.

Event payload (JSON)::

    {
        "status": "success" | "error" | "timeout",
        "pipeline_ids": [...],                       # every id watched, in the order given
        "counts": {"DONE": n, "ERROR": n, "PROCESSING": n},
        "failed_ids": [...],                         # ended ERROR (or unknown to the API)
        "pending_ids": [...],                        # not terminal when the event was sent
        "message": "...",                            # human readable, bounded
    }

``success``: every pipeline is DONE. ``error``: every pipeline is terminal and some failed (then
``pending_ids`` is empty), or polling failed for good (bad key, too many consecutive errors; then
``pending_ids`` lists what is unresolved). ``timeout``: ``end_time`` passed with ``pending_ids`` left.

With ``webhook_hints`` (opt-in, :mod:`leapi_provider.webhooks`), the gaps between rounds are spent waiting
for LEAPI's webhooks: a hinted pipeline is read at once (only it), and a full round happens only when a gap
passes without hints, so ``poll_interval`` becomes the fallback's gap. The status read still decides.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
from airflow.triggers.base import BaseTrigger, TriggerEvent

from leapi.models import PipelineStatus
from leapi.polling import DEFAULT_INITIAL_POLL_INTERVAL_S, poll_schedule
from leapi.redaction import redact_text
from leapi_provider.exceptions import LeapiAuthError, LeapiError, LeapiNotFoundError
from leapi_provider.hooks.leapi import LeapiHook
from leapi_provider.utils import coerce_pipeline_ids

if TYPE_CHECKING:
    from leapi_provider.webhooks.hints import WebhookHintSource

EVENT_SUCCESS = "success"
EVENT_ERROR = "error"
EVENT_TIMEOUT = "timeout"
EVENT_STATUSES = (EVENT_SUCCESS, EVENT_ERROR, EVENT_TIMEOUT)
#: Errors quoted in an event message (the rest is counted, keeping the event small).
_MAX_QUOTED_ERRORS = 5
_MAX_ERROR_CHARS = 300
#: The wait between poll rounds (a module attribute so that tests can observe the schedule).
_sleep = asyncio.sleep


def validate_pipeline_event(event: Any) -> dict[str, Any]:
    """Check that ``event`` is a payload of :class:`LeapiPipelineTrigger`; return it."""
    if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES:
        raise LeapiError(f"Unexpected event from LeapiPipelineTrigger: {event!r}")
    for key in ("pipeline_ids", "counts", "failed_ids", "pending_ids", "message"):
        if key not in event:
            raise LeapiError(f"Event from LeapiPipelineTrigger lacks {key!r}: {event!r}")
    return event


def _short(value: Any) -> str:
    text = redact_text(value if isinstance(value, str) else repr(value))
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


class LeapiPipelineTrigger(BaseTrigger):
    """Polls ``GET /v1/pipeline/{id}`` for each id until all are DONE/ERROR or ``end_time`` passes.

    :param pipeline_ids: the pipelines to wait for (one or many).
    :param end_time: wall-clock deadline, Unix seconds (survives a triggerer restart, unlike a duration).
    :param leapi_conn_id: the LEAPI connection.
    :param poll_interval: the longest gap between poll rounds, in seconds.
    :param initial_poll_interval: the first gap; it doubles each round up to ``poll_interval``.
    :param max_consecutive_errors: transient poll failures in a row tolerated per pipeline before the
        trigger gives up with an ``error`` event.
    :param max_concurrency: polls in flight at once.
    :param webhook_hints: a :class:`~leapi_provider.webhooks.hints.WebhookHintSource`'s ``serialize()``: wake
        on LEAPI's webhooks between rounds (then ``poll_interval`` is the gap of the fallback polling).
    """

    def __init__(
        self,
        *,
        pipeline_ids: Sequence[int],
        end_time: float,
        leapi_conn_id: str = LeapiHook.default_conn_name,
        poll_interval: float = 30.0,
        initial_poll_interval: float = DEFAULT_INITIAL_POLL_INTERVAL_S,
        max_consecutive_errors: int = 5,
        max_concurrency: int = 32,
        webhook_hints: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.pipeline_ids = coerce_pipeline_ids(list(pipeline_ids))
        self.end_time = float(end_time)
        self.leapi_conn_id = leapi_conn_id
        self.poll_interval = float(poll_interval)
        self.initial_poll_interval = float(initial_poll_interval)
        self.max_consecutive_errors = int(max_consecutive_errors)
        self.max_concurrency = int(max_concurrency)
        self.webhook_hints = dict(webhook_hints) if webhook_hints else None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "pipeline_ids": list(self.pipeline_ids),
                "end_time": self.end_time,
                "leapi_conn_id": self.leapi_conn_id,
                "poll_interval": self.poll_interval,
                "initial_poll_interval": self.initial_poll_interval,
                "max_consecutive_errors": self.max_consecutive_errors,
                "max_concurrency": self.max_concurrency,
                "webhook_hints": self.webhook_hints,
            },
        )

    def _hook(self) -> LeapiHook:
        # One quick in-request retry; lasting trouble is counted across rounds (max_consecutive_errors). A
        # rate-limited poll waits at most one poll interval: the next round asks again anyway.
        return LeapiHook(self.leapi_conn_id, max_retries=1, rate_limit_budget=self.poll_interval)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        statuses: dict[int, PipelineStatus | None] = dict.fromkeys(self.pipeline_ids)
        errors: dict[int, Any] = {}
        consecutive_errors: dict[int, int] = dict.fromkeys(self.pipeline_ids, 0)
        semaphore = asyncio.Semaphore(max(self.max_concurrency, 1))
        fatal: list[str] = []
        hook = self._hook()

        async def poll(pipeline_id: int) -> None:
            async with semaphore:
                if fatal:
                    return
                try:
                    pipeline = await hook.aget_pipeline(pipeline_id)
                except LeapiAuthError as exc:
                    fatal.append(str(exc))
                    return
                except LeapiNotFoundError:
                    statuses[pipeline_id] = PipelineStatus.ERROR
                    errors[pipeline_id] = "pipeline not found (unknown id, or it belongs to another API key)"
                    return
                except (LeapiError, httpx.HTTPError, ValueError) as exc:
                    consecutive_errors[pipeline_id] += 1
                    self.log.warning(
                        "LEAPI poll of pipeline %s failed (%d/%d in a row): %s",
                        pipeline_id,
                        consecutive_errors[pipeline_id],
                        self.max_consecutive_errors,
                        exc,
                    )
                    if consecutive_errors[pipeline_id] >= self.max_consecutive_errors:
                        fatal.append(
                            f"polling pipeline {pipeline_id} failed {consecutive_errors[pipeline_id]} times in a row: {exc}"
                        )
                    return
                consecutive_errors[pipeline_id] = 0
                statuses[pipeline_id] = pipeline.status
                if pipeline.status is PipelineStatus.ERROR:
                    errors[pipeline_id] = pipeline.errors or pipeline.error or "ERROR (no details)"

        hints = self._hint_source()
        # With hints, polling is the fallback: every poll_interval, from the start.
        gaps = poll_schedule(self.poll_interval, self.poll_interval if hints else self.initial_poll_interval)
        # The deferring task has just polled these pipelines, so the first poll waits one gap. Firing at once
        # could also resume the task before the scheduler has processed the exit of its deferring run:
        # Airflow 3.3 then fails the resumed try with "state mismatch" (seen under load on 2 cores).
        first_gap = min(next(gaps), self.end_time - time.time())
        hinted: set[int] | None = None
        try:
            if first_gap > 0:
                hinted = await self._pause(first_gap, hints, statuses, at_least=self.initial_poll_interval)
            while True:
                pending = [
                    pid for pid, status in statuses.items() if status is None or not status.is_terminal()
                ]
                await asyncio.gather(*(poll(pid) for pid in pending if hinted is None or pid in hinted))
                pending = [
                    pid for pid, status in statuses.items() if status is None or not status.is_terminal()
                ]
                if hints is not None and hinted:
                    # A hint for a pipeline still running was premature: let its true webhook count.
                    await hints.rearm(hinted.intersection(pending))
                if fatal:
                    yield TriggerEvent(
                        self._event(EVENT_ERROR, statuses, errors, pending, "; ".join(fatal[:3]))
                    )
                    return
                if not pending:
                    status = EVENT_ERROR if errors else EVENT_SUCCESS
                    yield TriggerEvent(self._event(status, statuses, errors, pending, ""))
                    return
                remaining = self.end_time - time.time()
                if remaining <= 0:
                    message = (
                        f"{len(pending)} of {len(statuses)} pipeline(s) still PROCESSING at the deadline"
                    )
                    yield TriggerEvent(self._event(EVENT_TIMEOUT, statuses, errors, pending, message))
                    return
                gap = min(next(gaps), remaining)
                self.log.info(
                    "LEAPI: %d of %d pipeline(s) finished; next poll in %.1fs",
                    len(statuses) - len(pending),
                    len(statuses),
                    gap,
                )
                hinted = await self._pause(gap, hints, statuses)
        finally:
            await hook.aclose()
            if hints is not None:
                await hints.aclose()

    def _hint_source(self) -> WebhookHintSource | None:
        if not self.webhook_hints:
            return None
        from leapi_provider.webhooks.hints import WebhookHintSource

        return WebhookHintSource.deserialize(self.webhook_hints)

    @staticmethod
    async def _pause(
        gap: float,
        hints: WebhookHintSource | None,
        statuses: Mapping[int, PipelineStatus | None],
        *,
        at_least: float = 0.0,
    ) -> set[int] | None:
        """Wait ``gap`` seconds, or less when webhooks hint that pending pipelines are done.

        :returns: the hinted pending ids to read now, or ``None`` for a full round (the gap passed).
        :param at_least: the shortest wait even when hinted (see the first gap's comment in :meth:`run`).
        """
        if hints is None:
            await _sleep(gap)
            return None
        started = time.monotonic()
        pending = {pid for pid, status in statuses.items() if status is None or not status.is_terminal()}
        while (remaining := gap - (time.monotonic() - started)) > 0:
            # Ids not pending (done already, late, forged, of another try) do not end the wait.
            hinted = pending & await hints.wait_for_hints(remaining)
            if hinted:
                if (rest := at_least - (time.monotonic() - started)) > 0:
                    await _sleep(rest)
                return hinted
        return None

    def _event(
        self,
        status: str,
        statuses: dict[int, PipelineStatus | None],
        errors: dict[int, Any],
        pending: list[int],
        message: str,
    ) -> dict[str, Any]:
        counts = {s.value: 0 for s in PipelineStatus}
        for value in statuses.values():
            counts[(value or PipelineStatus.PROCESSING).value] += 1
        failed = [pid for pid in self.pipeline_ids if pid in errors]
        if failed:
            quoted = "; ".join(f"{pid}: {_short(errors[pid])}" for pid in failed[:_MAX_QUOTED_ERRORS])
            more = f" (+{len(failed) - _MAX_QUOTED_ERRORS} more)" if len(failed) > _MAX_QUOTED_ERRORS else ""
            failure_text = f"{len(failed)} pipeline(s) failed: {quoted}{more}"
            message = f"{message}; {failure_text}" if message else failure_text
        if not message:
            message = f"all {len(statuses)} pipeline(s) DONE"
        return {
            "status": status,
            "pipeline_ids": list(self.pipeline_ids),
            "counts": counts,
            "failed_ids": failed,
            "pending_ids": pending,
            "message": message,
        }
