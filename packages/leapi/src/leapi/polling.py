"""Waiting for pipelines: the poll schedule, and the bookkeeping of one wait (no I/O; the clients poll).

The docs: poll ``GET /v1/pipeline/<id>`` "periodically" until ``status`` is DONE or ERROR.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

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


def poll_schedule(poll_interval: float, initial: float = DEFAULT_INITIAL_POLL_INTERVAL_S) -> Iterator[float]:
    """Gaps between polls: ``initial`` at first, then a tenth of the time waited so far, at most ``poll_interval``.

    A doubling schedule would overshoot a 30 s batch by up to its longest gap; this one by about 10%.

    >>> import itertools
    >>> [round(gap, 2) for gap in itertools.islice(poll_schedule(3.0, 2.0), 14)]
    [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.2, 2.42, 2.66]
    """
    waited = 0.0
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


class WaitState:
    """One wait for several pipelines: what finished, what is pending, when to poll next.

    :param pipeline_ids: the pipelines, in the order results are returned.
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
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._gaps = poll_schedule(poll_interval, min(initial_poll_interval, poll_interval))
        self._finished: dict[int, Pipeline] = {}

    @property
    def pending(self) -> list[int]:
        return [pid for pid in self.pipeline_ids if pid not in self._finished]

    def record(self, pipeline: Pipeline) -> None:
        """Note a polled pipeline (kept once terminal: a terminal status never changes)."""
        if pipeline.status is not None and pipeline.status.is_terminal():
            self._finished[pipeline.id] = pipeline

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
        pipelines = [self._finished[pid] for pid in self.pipeline_ids]
        failed = {p.id: p.errors or p.error for p in pipelines if p.status is PipelineStatus.ERROR}
        if failed and raise_on_error:
            quoted = "; ".join(f"{pid}: {errors or 'no details'}" for pid, errors in list(failed.items())[:5])
            raise LeapiPipelineFailedError(
                f"{len(failed)} LEAPI pipeline(s) ended in ERROR: {quoted}",
                pipeline_ids=list(failed),
                errors=failed,
            )
        return pipelines
