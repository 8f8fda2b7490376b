"""Waiting for pipelines within a request budget: which pipeline to read next, and when (no I/O here).

The docs: poll ``GET /v1/pipeline/<id>`` "periodically" until ``status`` is DONE or ERROR, and the API's
rate limiter counts every request it receives, status reads included. So a wait must spend as few reads
as the answers allow. Pipelines of one account are processed about in the order they were submitted, so:

* :class:`InOrderPoll` (what :meth:`leapi.Client.wait` and :meth:`leapi.AsyncClient.wait` use) reads the
  pending pipelines in submission order and ends a round at the first one still PROCESSING: a round
  costs the pipelines that finished since the last one, plus one. When the head has been PROCESSING for
  ``stuck_rounds`` rounds, every ``stuck_rounds``-th round also *scouts* one pipeline past it (the next
  one each time, cycling), and walks on from a finished scout: pipelines that finish out of order are
  still collected, at most one extra read per ``stuck_rounds`` rounds.
* :class:`FinishProbe` (the trigger's partial mode) only has to learn that *enough* pipelines finished
  for the caller to read them itself: it reads one pipeline per round, the ``want``-th pending one in
  order (or, while that one is stuck, a scout past it).

The gaps between rounds come from :func:`poll_schedule`.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator

from leapi.errors import LeapiPipelineFailedError, LeapiWaitTimeoutError
from leapi.models import Pipeline, PipelineStatus

#: Polls start this soon after a submit (most small images finish in seconds) ...
DEFAULT_INITIAL_POLL_INTERVAL_S = 2.0
#: ... and each later gap is this fraction of the time already waited (up to the caller's ``poll_interval``),
#: so a wait ends at most ~10% after the pipelines did, while a long wait still polls rarely.
POLL_GAP_FRACTION = 0.1
DEFAULT_POLL_INTERVAL_S = 30.0
#: How long :meth:`leapi.Client.wait` waits unless told: the docs keep a result for 24 hours.
DEFAULT_WAIT_TIMEOUT_S = 24 * 60 * 60.0
#: A pipeline read PROCESSING this many rounds in a row is stuck: every this-many rounds, a scout past it.
DEFAULT_STUCK_ROUNDS = 3


def poll_schedule(
    poll_interval: float, initial: float = DEFAULT_INITIAL_POLL_INTERVAL_S, *, waited: float = 0.0
) -> Iterator[float]:
    """Gaps between polls: ``initial`` at first, then a tenth of the time waited so far, at most ``poll_interval``.

    A doubling schedule would overshoot a 30 s batch by up to its longest gap; this one by about 10%.

    :param waited: seconds already waited before the first gap (a wait resumed after a deferral goes on
        with the gaps it had reached, not with short ones again).

    >>> import itertools
    >>> [round(gap, 2) for gap in itertools.islice(poll_schedule(3.0, 2.0), 14)]
    [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.2, 2.42, 2.66]
    >>> next(poll_schedule(30.0, 2.0, waited=100.0))
    10.0
    """
    waited = max(waited, 0.0)
    while True:
        gap = min(poll_interval, max(initial, waited * POLL_GAP_FRACTION))
        yield gap
        waited += gap


def pipeline_ids_of(pipeline_ids: int | Iterable[int]) -> list[int]:
    """The ids to wait for, duplicates dropped, order kept."""
    if isinstance(pipeline_ids, bool):
        raise TypeError(f"not a pipeline id: {pipeline_ids!r}")
    items = [pipeline_ids] if isinstance(pipeline_ids, int) else list(pipeline_ids)
    ids = list(dict.fromkeys(int(item) for item in items))
    if not ids:
        raise ValueError("no pipeline id to wait for")
    return ids


class _Stuck:
    """How long the pipeline a poll waits on has been PROCESSING, and which pipeline to scout next.

    :param order: each pipeline's position in submission order.
    :param stuck_rounds: see :class:`InOrderPoll`.
    """

    def __init__(self, order: dict[int, int], stuck_rounds: int) -> None:
        self.order = order
        self.stuck_rounds = max(1, stuck_rounds)
        self._blocker: int | None = None
        self._rounds = 0
        self._last_scout = -1  # position of the last pipeline scouted

    def note_processing(self, pipeline_id: int) -> None:
        """``pipeline_id`` ended a round still PROCESSING."""
        if pipeline_id != self._blocker:
            self._blocker, self._rounds = pipeline_id, 0
        self._rounds += 1

    def scout_due(self) -> bool:
        """Whether this round scouts past the blocker (every ``stuck_rounds``-th round it blocks)."""
        return self._rounds >= self.stuck_rounds and self._rounds % self.stuck_rounds == 0

    def next_scout(self, candidates: list[int]) -> int | None:
        """The next pipeline to scout among ``candidates`` (in submission order): the first one after the
        last scouted, cycling back to the first."""
        if not candidates:
            return None
        scout = next((pid for pid in candidates if self.order[pid] > self._last_scout), candidates[0])
        self._last_scout = self.order[scout]
        return scout


class InOrderPoll:
    """The reads of one wait: pending pipelines in submission order, each round ending at the first one
    still PROCESSING (see the module docs).

    Drive it with :meth:`round`, recording each read before asking for the next id::

        for pipeline_id in poll.round():
            poll.record(client.get_pipeline(pipeline_id))

    :param pipeline_ids: the pipelines, in the order they were submitted.
    :param stuck_rounds: rounds a pipeline may block before every such round also scouts past it.
    """

    def __init__(self, pipeline_ids: list[int], *, stuck_rounds: int = DEFAULT_STUCK_ROUNDS) -> None:
        self.pipeline_ids = pipeline_ids
        self._finished: dict[int, Pipeline | None] = {}
        self._order = {pid: position for position, pid in enumerate(pipeline_ids)}
        self._stuck = _Stuck(self._order, stuck_rounds)
        #: Reads handed out so far (the requests this wait cost).
        self.reads = 0

    @property
    def pending(self) -> list[int]:
        return [pid for pid in self.pipeline_ids if pid not in self._finished]

    @property
    def finished(self) -> dict[int, Pipeline | None]:
        """Terminal pipelines by id (``None`` for one marked with :meth:`record_terminal`)."""
        return self._finished

    def is_finished(self, pipeline_id: int) -> bool:
        return pipeline_id in self._finished

    def record(self, pipeline: Pipeline) -> None:
        """Note a read (kept once terminal: a terminal status never changes)."""
        if pipeline.status is not None and pipeline.status.is_terminal():
            self._finished[pipeline.id] = pipeline

    def record_terminal(self, pipeline_id: int) -> None:
        """Count ``pipeline_id`` as finished without an answer to keep (e.g. the API no longer knows it)."""
        self._finished[pipeline_id] = None

    def round(self, *, through: int | None = None, beyond: bool = True) -> Iterator[int]:
        """The ids to read this round, one at a time (record each answer before the next ``next()``).

        :param through: read every pending pipeline up to this one, running or not (it is known to have
            finished, e.g. from a :class:`FinishProbe`), then go on as usual.
        :param beyond: with ``through``, whether to go on past it; ``False`` reads exactly the pending
            pipelines up to ``through`` (e.g. the ones webhooks said are done: a read past them would
            find the rest still running, and their webhooks will say when they are not).
        """
        pending = self.pending
        if not pending:
            return
        if through in self._order:
            for pipeline_id in [pid for pid in pending if self._order[pid] <= self._order[through]]:
                self.reads += 1
                yield pipeline_id
            if not beyond:
                return
            pending = [pid for pid in self.pending if self._order[pid] > self._order[through]]
        stop = yield from self._walk(pending)
        if stop is None:
            return
        self._stuck.note_processing(stop)
        if not self._stuck.scout_due():
            return
        later = [pid for pid in self.pending if self._order[pid] > self._order[stop]]
        scout = self._stuck.next_scout(later)
        if scout is not None:
            yield from self._walk([pid for pid in later if self._order[pid] >= self._order[scout]])

    def _walk(self, ids: list[int]) -> Generator[int, None, int | None]:
        """Read ``ids`` in order while they are finished; return the first still PROCESSING (or ``None``)."""
        for pipeline_id in ids:
            self.reads += 1
            yield pipeline_id
            if pipeline_id not in self._finished:
                return pipeline_id
        return None


class FinishProbe:
    """Learns, one read per round, that about ``want`` more pipelines finished (the caller reads them).

    Under the in-order assumption, the ``want``-th pending pipeline finishing means the ones before it
    did too; the caller then reads them all itself, so each finished pipeline costs one read by the
    caller and the probe costs one read per round. While the probed pipeline is stuck, every
    ``stuck_rounds``-th round probes a scout past it instead (pipelines that finish out of order).

    :param pipeline_ids: the pending pipelines, in submission order.
    :param want: how many of them should have finished before the caller is woken.
    """

    def __init__(
        self, pipeline_ids: list[int], *, want: int, stuck_rounds: int = DEFAULT_STUCK_ROUNDS
    ) -> None:
        self.pipeline_ids = pipeline_ids
        position = min(max(want, 1), len(pipeline_ids)) - 1
        self.target = pipeline_ids[position]
        self._later = pipeline_ids[position + 1 :]
        self._stuck = _Stuck({pid: i for i, pid in enumerate(pipeline_ids)}, stuck_rounds)
        self._probing = self.target
        #: The first pipeline found terminal (the caller reads up to it); ``None`` until then.
        self.ready_through: int | None = None
        self.reads = 0

    def next_id(self) -> int:
        """The pipeline to read this round."""
        self._probing = self.target
        if self._stuck.scout_due():
            self._probing = self._stuck.next_scout(self._later) or self.target
        self.reads += 1
        return self._probing

    def record(self, status: PipelineStatus | None) -> bool:
        """The status read for :meth:`next_id`'s pipeline; ``True`` once a probed pipeline is terminal."""
        if status is not None and status.is_terminal():
            self.ready_through = self._probing
            return True
        self._stuck.note_processing(self.target)  # (a scout still running: the target blocks one more round)
        return False


class WaitState:
    """One wait for several pipelines: an :class:`InOrderPoll`, its schedule and its deadline.

    :param pipeline_ids: the pipelines, in the order results are returned (and, best, submitted).
    :param timeout: seconds until :meth:`next_gap` raises :class:`~leapi.errors.LeapiWaitTimeoutError`
        (``None``: no limit).
    :param poll_interval: the longest gap between poll rounds.
    :param initial_poll_interval: the first gap (see :func:`poll_schedule`).
    """

    def __init__(
        self,
        pipeline_ids: list[int],
        *,
        timeout: float | None,
        poll_interval: float,
        initial_poll_interval: float,
    ) -> None:
        self.pipeline_ids = pipeline_ids
        self.timeout = timeout
        self.poll = InOrderPoll(pipeline_ids)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._gaps = poll_schedule(poll_interval, min(initial_poll_interval, poll_interval))

    @property
    def pending(self) -> list[int]:
        return self.poll.pending

    def round(self) -> Iterator[int]:
        """The ids to read this round (see :meth:`InOrderPoll.round`)."""
        return self.poll.round()

    def record(self, pipeline: Pipeline) -> None:
        self.poll.record(pipeline)

    def next_gap(self) -> float | None:
        """Seconds until the next poll round; ``None`` when every pipeline finished.

        :raises LeapiWaitTimeoutError: some are still running at the deadline.
        """
        pending = self.pending
        if not pending:
            return None
        gap = next(self._gaps)
        if self._deadline is None:
            return gap
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise LeapiWaitTimeoutError(
                f"{len(pending)} of {len(self.pipeline_ids)} LEAPI pipeline(s) still PROCESSING after "
                f"{self.timeout:.0f}s: {pending[:10]}; they go on, wait again to collect them",
                pending_ids=pending,
            )
        return min(gap, remaining)

    def results(self, *, raise_on_error: bool) -> list[Pipeline]:
        """The finished pipelines in the order asked for.

        :raises LeapiPipelineFailedError: some ended in ERROR and ``raise_on_error`` is set.
        """
        pipelines = [self.poll.finished[pid] for pid in self.pipeline_ids]
        known = [p for p in pipelines if p is not None]
        failed = {p.id: p.errors or p.error for p in known if p.status is PipelineStatus.ERROR}
        if failed and raise_on_error:
            quoted = "; ".join(f"{pid}: {errors or 'no details'}" for pid, errors in list(failed.items())[:5])
            raise LeapiPipelineFailedError(
                f"{len(failed)} LEAPI pipeline(s) ended in ERROR: {quoted}",
                pipeline_ids=list(failed),
                errors=failed,
            )
        return known
