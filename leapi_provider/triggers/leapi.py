"""Trigger that waits, in the triggerer, for LEAPI pipelines to finish: all of them, or enough of them.

One trigger watches a whole batch. Its reads follow :mod:`leapi.polling`, because the API's rate limit
counts status reads too:

* waiting for all (``min_finished=None``: the submit operator, the sensor): each round reads the
  pending pipelines in submission order and stops at the first one still PROCESSING
  (:class:`~leapi.polling.InOrderPoll`); the event says which failed;
* waiting for enough (``min_finished=k``: the catalog's batches, which transfer what finished and defer
  again for the rest): one read per round, of the ``k``-th pending pipeline
  (:class:`~leapi.polling.FinishProbe`); a ``ready`` event names it, and the task reads the finished
  pipelines itself, so each costs one read.

No event is yielded before ``not_before`` (wall clock): a task resumed within Airflow's reporting window
after its deferral can lose its try to the scheduler (see :func:`earliest_resume`). The wait between two
rounds is one method, :meth:`LeapiPipelineTrigger.wait_for_next_round`.

With ``webhook_hints`` (opt-in, :mod:`leapi_provider.webhooks`), the trigger waits for LEAPI's webhooks
instead, and polls as above only when ``poll_interval`` (the fallback's gap, 60 s or more) passes without
one:

* waiting for all: a hinted pipeline is read at once (only it); a read that finds it still running was a
  premature or forged hint, handed back (:meth:`~leapi_provider.webhooks.hints.WebhookHintSource.rearm`);
* waiting for enough: no read at all. Once the pending pipelines hinted without a gap from the first one
  number ``min_finished`` (or are all that is pending), a ``ready`` event with ``"hinted": true`` names the
  last of them; the task reads exactly those, and its reads decide. Ids the task found still running come
  back as ``rearm_ids`` in its next deferral.

The hinted ids are the channel's de-duplication set, so a trigger that restarts, or a batch that defers
again, still knows the webhooks that came before it.

Event payload (JSON, validated by :func:`validate_pipeline_event`)::

    {
        "status": "success" | "error" | "timeout" | "ready",
        "pipeline_ids": [...],                       # every id watched, in the order given
        "counts": {"DONE": n, "ERROR": n, "PROCESSING": n},   # what the trigger read
        "failed_ids": [...],                         # read ERROR (or unknown to the API)
        "pending_ids": [...],                        # not seen terminal
        "ready_through": id | null,                  # ready: the probed pipeline found terminal
        "hinted": bool,                              # ready: ready_through and those before it were hinted
        "message": "...",                            # human readable, bounded
    }

``success``: every pipeline is DONE. ``error``: every pipeline is terminal and some failed (then
``pending_ids`` is empty), or polling failed for good (bad key, too many consecutive errors; then
``pending_ids`` lists what is unresolved). ``timeout``: ``end_time`` passed with ``pending_ids`` left.
``ready``: ``min_finished`` pipelines have (by the probe) finished; the ones before ``ready_through``
in the order given are, most likely, terminal too.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from airflow.triggers.base import BaseTrigger, TriggerEvent

from leapi.errors import LeapiAuthError, LeapiError, LeapiNotFoundError, LeapiRateLimitError
from leapi.models import Pipeline, PipelineStatus
from leapi.polling import DEFAULT_INITIAL_POLL_INTERVAL_S, FinishProbe, InOrderPoll, poll_schedule
from leapi.redaction import redact_text
from leapi_provider.exceptions import LeapiTriggerEventError
from leapi_provider.hooks.leapi import LeapiHook
from leapi_provider.utils import coerce_pipeline_ids

if TYPE_CHECKING:
    from leapi_provider.webhooks.hints import WebhookHintSource

EVENT_SUCCESS = "success"
EVENT_ERROR = "error"
EVENT_TIMEOUT = "timeout"
EVENT_READY = "ready"
EVENT_STATUSES = (EVENT_SUCCESS, EVENT_ERROR, EVENT_TIMEOUT, EVENT_READY)
#: Seconds added to ``[workers] min_heartbeat_interval`` for the rest of Airflow's reporting window (the
#: task process's exit, the executor's report, a scheduler loop under load): see :func:`earliest_resume`.
#: Airflow config ``[leapi] resume_margin`` overrides it.
RESUME_MARGIN_S = 10.0
#: Errors quoted in an event message (the rest is counted, keeping the event small).
_MAX_QUOTED_ERRORS = 5
_MAX_ERROR_CHARS = 300
_NOT_FOUND = "pipeline not found (unknown id, or it belongs to another API key)"


def earliest_resume(now: float | None = None) -> float:
    """The wall-clock time before which a trigger deferred now must not fire.

    After ``defer()``, the task's supervisor reports the task process's exit to the executor only when
    its ``select`` wakes up, up to ``[workers] min_heartbeat_interval`` (5 s) later; the scheduler then
    processes that report in a later loop. Airflow 3.3 tolerates the report arriving while the resumed
    task instance is still ``scheduled``, but not once it is ``queued`` or ``running`` again: the
    scheduler then logs "finished with state success, but the task instance's state attribute is
    running", fails the resumed try, and that try's API calls answer 404. A trigger that fires no sooner
    than this (the interval, plus ``[leapi] resume_margin``, default :data:`RESUME_MARGIN_S`, for the rest
    of the window) resumes its task only after the report was processed. docs/provider.md, "Deferral and
    Airflow's reporting window".
    """
    from airflow.sdk import conf

    interval = conf.getfloat("workers", "min_heartbeat_interval", fallback=5.0)
    margin = conf.getfloat("leapi", "resume_margin", fallback=RESUME_MARGIN_S)
    return (time.time() if now is None else now) + interval + margin


def validate_pipeline_event(event: Any) -> dict[str, Any]:
    """Check that ``event`` is a payload of :class:`LeapiPipelineTrigger`; return it.

    The event crosses the triggerer/worker boundary through the metadata database: a malformed one (a
    version skew, another trigger) must fail the task, not pass for a success.

    :raises LeapiTriggerEventError: it is not (fails the task without retries).
    """
    if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES:
        raise LeapiTriggerEventError(f"Unexpected event from LeapiPipelineTrigger: {event!r:.500}")
    for key, kind in (
        ("pipeline_ids", list),
        ("counts", dict),
        ("failed_ids", list),
        ("pending_ids", list),
        ("message", str),
    ):
        if not isinstance(event.get(key), kind):
            raise LeapiTriggerEventError(f"Event from LeapiPipelineTrigger lacks {key!r}: {event!r:.500}")
    ids = event["pipeline_ids"]
    if not all(isinstance(i, int) for i in [*ids, *event["failed_ids"], *event["pending_ids"]]):
        raise LeapiTriggerEventError(f"Event from LeapiPipelineTrigger has non-integer ids: {event!r:.500}")
    if event["status"] == EVENT_READY and event.get("ready_through") not in ids:
        raise LeapiTriggerEventError(f"A ready event must name a watched pipeline: {event!r:.500}")
    return event


def _short(value: Any) -> str:
    text = redact_text(value if isinstance(value, str) else repr(value))
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


class _PollFailed(Exception):
    """Polling cannot go on (a refused key, or too many errors in a row)."""


@dataclass
class _Watch:
    """What one run of the trigger has read so far."""

    failed: dict[int, Any] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    consecutive_errors: dict[int, int] = field(default_factory=dict)


class LeapiPipelineTrigger(BaseTrigger):
    """Reads ``GET /v1/pipeline/{id}`` until the pipelines are DONE/ERROR (or enough of them are), or until
    ``end_time``; yields one small event (module docs).

    :param pipeline_ids: the pipelines to wait for, in submission order.
    :param end_time: wall-clock deadline, Unix seconds (survives a triggerer restart, unlike a duration).
    :param leapi_conn_id: the LEAPI connection.
    :param poll_interval: the longest gap between poll rounds, in seconds.
    :param initial_poll_interval: the first gap; later ones are a tenth of the time waited, up to
        ``poll_interval``.
    :param max_consecutive_errors: transient poll failures in a row tolerated per pipeline before the
        trigger gives up with an ``error`` event.
    :param not_before: wall-clock time (Unix seconds) before which no event is yielded, nor a read made
        (:func:`earliest_resume` at the deferral); ``None``: at once.
    :param started_at: wall-clock time the wait began (the submit); the gaps go on growing from there
        after a re-deferral. ``None``: now.
    :param min_finished: yield a ``ready`` event once about this many of the pipelines finished (one read
        per round; the task reads them); ``None``: wait for all of them.
    :param webhook_hints: a :class:`~leapi_provider.webhooks.hints.WebhookHintSource`'s ``serialize()``:
        wait for LEAPI's webhooks (then ``poll_interval`` is the fallback polling's gap). See the module docs.
    :param rearm_ids: pipelines hinted done that the task read and found still running: their hints are
        handed back before the wait (so their true webhooks count).
    :param paced_per_minute: the triggerer's declared share of the account's rate: its reads of the account
        are spaced evenly at it (:class:`~leapi_provider.hooks.leapi.LeapiHook`'s ``paced_per_minute``);
        ``None``: not declared.
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
        not_before: float | None = None,
        started_at: float | None = None,
        min_finished: int | None = None,
        webhook_hints: Mapping[str, Any] | None = None,
        rearm_ids: Sequence[int] = (),
        paced_per_minute: float | None = None,
    ) -> None:
        super().__init__()
        # (kwargs cross Airflow's serialization boundary: refuse bad ones before they are stored)
        self.pipeline_ids = coerce_pipeline_ids(list(pipeline_ids))
        self.end_time = float(end_time)
        self.leapi_conn_id = leapi_conn_id
        self.poll_interval = float(poll_interval)
        self.initial_poll_interval = float(initial_poll_interval)
        self.max_consecutive_errors = int(max_consecutive_errors)
        self.not_before = None if not_before is None else float(not_before)
        self.started_at = None if started_at is None else float(started_at)
        if min_finished is not None and int(min_finished) < 1:
            raise ValueError(f"min_finished must be 1 or more (or None), got {min_finished!r}")
        self.min_finished = None if min_finished is None else int(min_finished)
        self.webhook_hints = dict(webhook_hints) if webhook_hints else None
        # (coerce_pipeline_ids refuses an empty list: none to hand back is the usual case)
        self.rearm_ids = coerce_pipeline_ids(list(rearm_ids)) if rearm_ids else []
        self.paced_per_minute = None if paced_per_minute is None else float(paced_per_minute)

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
                "not_before": self.not_before,
                "started_at": self.started_at,
                "min_finished": self.min_finished,
                "webhook_hints": self.webhook_hints,
                "rearm_ids": list(self.rearm_ids),
                "paced_per_minute": self.paced_per_minute,
            },
        )

    async def wait_for_next_round(self, seconds: float) -> None:
        """Wait ``seconds`` before the next poll round.

        The one place the trigger waits: a subclass may end it early when a hint arrives (a LEAPI
        webhook for one of its pipelines); the round's reads still decide what finished.
        """
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # One quick in-request retry; lasting trouble is counted across rounds (max_consecutive_errors). A
        # rate-limited poll waits at most one poll interval: the next round asks again anyway.
        hook = LeapiHook(
            self.leapi_conn_id,
            max_retries=1,
            rate_limit_budget=self.poll_interval,
            paced_per_minute=self.paced_per_minute,
        )
        hints = self._hint_source()
        try:
            if hints is None:
                yield TriggerEvent(await self._wait(hook))
            else:
                yield TriggerEvent(await self._wait_on_hints(hook, hints))
        finally:
            await hook.aclose()
            if hints is not None:
                await hints.aclose()

    def _hint_source(self) -> WebhookHintSource | None:
        if not self.webhook_hints:
            return None
        from leapi_provider.webhooks.hints import WebhookHintSource

        return WebhookHintSource.deserialize(self.webhook_hints)

    async def _wait_on_hints(self, hook: LeapiHook, hints: WebhookHintSource) -> dict[str, Any]:
        """The wait with webhooks: act on hints as they come, poll only when a fallback gap passes
        without one (module docs)."""
        watch = _Watch()
        poll = InOrderPoll(self.pipeline_ids)
        probe = FinishProbe(self.pipeline_ids, want=self.min_finished) if self.min_finished else None
        await hints.rearm(self.rearm_ids)
        # The queued hints first: they are all in the channel's seen set too, and read twice they would
        # cost a second read of the same pipeline.
        queued = await hints.wait_for_hints(0)
        hinted = (queued | await hints.hinted()) & set(poll.pending)
        not_before = self.not_before or 0.0
        next_fallback = max(time.time() + self.poll_interval, not_before)
        while True:
            now = time.time()
            try:
                if now >= not_before and (
                    event := await self._act_on_hints(hook, poll, watch, hints, hinted)
                ):
                    return event
                if now >= next_fallback:
                    next_fallback = now + self.poll_interval
                    if probe is not None and await self._probe_round(hook, probe, watch):
                        return self._event(EVENT_READY, watch, self._unseen(watch), probe.ready_through)
                    if probe is None and await self._poll_round(hook, poll, watch):
                        return self._event(EVENT_ERROR if watch.failed else EVENT_SUCCESS, watch, [])
            except _PollFailed as exc:
                return self._event(EVENT_ERROR, watch, self._unseen(watch), message=str(exc))
            if now >= self.end_time:
                pending = self._unseen(watch)
                message = (
                    f"{len(pending)} of {len(self.pipeline_ids)} pipeline(s) still PROCESSING at the deadline"
                )
                return self._event(EVENT_TIMEOUT, watch, pending, message=message)
            wake_at = min(self.end_time, next_fallback, not_before if not_before > now else next_fallback)
            if self.min_finished is None and hinted and now >= not_before:
                # (hinted pipelines left unread by a transient error: read again soon, not at the fallback)
                wake_at = min(wake_at, now + self.initial_poll_interval)
            hinted |= await hints.wait_for_hints(wake_at - time.time()) & set(poll.pending)

    async def _act_on_hints(
        self,
        hook: LeapiHook,
        poll: InOrderPoll,
        watch: _Watch,
        hints: WebhookHintSource,
        hinted: set[int],
    ) -> dict[str, Any] | None:
        """Read the hinted pipelines (waiting for all), or see whether enough are hinted (waiting for
        enough); the event to yield, or ``None``. Reads that contradict a hint hand it back."""
        if self.min_finished is not None:
            pending = poll.pending
            ready = list(itertools.takewhile(hinted.__contains__, pending))
            if ready and len(ready) >= min(self.min_finished, len(pending)):
                message = f"{len(ready)} pipeline(s) hinted done by LEAPI's webhooks, through {ready[-1]}"
                return self._event(EVENT_READY, watch, pending, ready[-1], message=message, hinted=True)
            return None
        for pipeline_id in [pid for pid in poll.pending if pid in hinted]:
            pipeline = await self._read(hook, pipeline_id, watch)
            if pipeline is None:
                break  # a transient error: the next hint or the fallback reads it again
            hinted.discard(pipeline_id)
            if pipeline.status is not None and pipeline.status.is_terminal():
                poll.record_terminal(pipeline_id)
            else:
                await hints.rearm([pipeline_id])
        if poll.pending:
            return None
        return self._event(EVENT_ERROR if watch.failed else EVENT_SUCCESS, watch, [])

    async def _wait(self, hook: LeapiHook) -> dict[str, Any]:
        now = time.time()
        started = self.started_at if self.started_at is not None else now
        gaps = poll_schedule(self.poll_interval, self.initial_poll_interval, waited=now - started)
        # The deferring task has just read these pipelines: the first round waits one gap (and for
        # not_before: Airflow's reporting window after the deferral).
        first = max(next(gaps), (self.not_before or now) - now)
        await self.wait_for_next_round(min(first, self.end_time - time.time()))
        watch = _Watch()
        probe = FinishProbe(self.pipeline_ids, want=self.min_finished) if self.min_finished else None
        poll = InOrderPoll(self.pipeline_ids)
        while True:
            try:
                if probe is not None and await self._probe_round(hook, probe, watch):
                    return self._event(EVENT_READY, watch, self._unseen(watch), probe.ready_through)
                if probe is None and await self._poll_round(hook, poll, watch):
                    return self._event(EVENT_ERROR if watch.failed else EVENT_SUCCESS, watch, [])
            except _PollFailed as exc:
                return self._event(EVENT_ERROR, watch, self._unseen(watch), message=str(exc))
            remaining = self.end_time - time.time()
            if remaining <= 0:
                pending = self._unseen(watch)
                message = (
                    f"{len(pending)} of {len(self.pipeline_ids)} pipeline(s) still PROCESSING at the deadline"
                )
                return self._event(EVENT_TIMEOUT, watch, pending, message=message)
            gap = min(next(gaps), remaining)
            self.log.info(
                "LEAPI: %d of %d pipeline(s) seen finished; next poll in %.1fs",
                len(watch.done) + len(watch.failed),
                len(self.pipeline_ids),
                gap,
            )
            await self.wait_for_next_round(gap)

    async def _poll_round(self, hook: LeapiHook, poll: InOrderPoll, watch: _Watch) -> bool:
        """One in-order round; ``True`` once every pipeline is terminal."""
        for pipeline_id in poll.round():
            pipeline = await self._read(hook, pipeline_id, watch)
            if pipeline is None:
                break  # a transient error: this round ends here
            if pipeline.status is not None and pipeline.status.is_terminal():
                poll.record_terminal(pipeline_id)
        return not poll.pending

    async def _probe_round(self, hook: LeapiHook, probe: FinishProbe, watch: _Watch) -> bool:
        """One probe; ``True`` once a probed pipeline is terminal."""
        pipeline_id = probe.next_id()
        pipeline = await self._read(hook, pipeline_id, watch)
        return pipeline is not None and probe.record(pipeline.status)

    async def _read(self, hook: LeapiHook, pipeline_id: int, watch: _Watch) -> Pipeline | None:
        """Read one pipeline and note what it says; ``None`` after a transient error.

        :raises _PollFailed: the key was refused, or this pipeline failed too often in a row.
        """
        try:
            pipeline = await hook.aget_pipeline(pipeline_id)
        except LeapiAuthError as exc:
            raise _PollFailed(str(exc)) from exc
        except LeapiNotFoundError:
            pipeline = Pipeline(id=pipeline_id, status=PipelineStatus.ERROR, error=_NOT_FOUND)
        except LeapiRateLimitError as exc:
            # (not a failure: the account's requests are spent for now; the next round asks again)
            self.log.info("LEAPI poll of pipeline %s waits for the rate limit: %s", pipeline_id, exc)
            return None
        except (LeapiError, httpx.HTTPError, ValueError) as exc:
            errors = watch.consecutive_errors[pipeline_id] = watch.consecutive_errors.get(pipeline_id, 0) + 1
            self.log.warning(
                "LEAPI poll of pipeline %s failed (%d/%d in a row): %s",
                pipeline_id,
                errors,
                self.max_consecutive_errors,
                exc,
            )
            if errors >= self.max_consecutive_errors:
                raise _PollFailed(
                    f"polling pipeline {pipeline_id} failed {errors} times in a row: {exc}"
                ) from exc
            return None
        watch.consecutive_errors.pop(pipeline_id, None)
        if pipeline.status is PipelineStatus.ERROR:
            watch.failed[pipeline_id] = pipeline.errors or pipeline.error or "ERROR (no details)"
        elif pipeline.status is PipelineStatus.DONE:
            watch.done.add(pipeline_id)
        return pipeline

    def _unseen(self, watch: _Watch) -> list[int]:
        return [pid for pid in self.pipeline_ids if pid not in watch.done and pid not in watch.failed]

    def _event(
        self,
        status: str,
        watch: _Watch,
        pending: list[int],
        ready_through: int | None = None,
        *,
        message: str = "",
        hinted: bool = False,
    ) -> dict[str, Any]:
        failed = [pid for pid in self.pipeline_ids if pid in watch.failed]
        if failed:
            quoted = "; ".join(f"{pid}: {_short(watch.failed[pid])}" for pid in failed[:_MAX_QUOTED_ERRORS])
            more = f" (+{len(failed) - _MAX_QUOTED_ERRORS} more)" if len(failed) > _MAX_QUOTED_ERRORS else ""
            failure_text = f"{len(failed)} pipeline(s) failed: {quoted}{more}"
            message = f"{message}; {failure_text}" if message else failure_text
        if status == EVENT_READY:
            message = message or f"pipeline {ready_through} finished: about {self.min_finished} are ready"
        if not message:
            message = f"all {len(self.pipeline_ids)} pipeline(s) DONE"
        counts = {
            PipelineStatus.PROCESSING.value: len(pending),
            PipelineStatus.DONE.value: len(watch.done),
            PipelineStatus.ERROR.value: len(failed),
        }
        return {
            "status": status,
            "pipeline_ids": list(self.pipeline_ids),
            "counts": counts,
            "failed_ids": failed,
            "pending_ids": pending,
            "ready_through": ready_through,
            "hinted": hinted,
            "message": message,
        }
