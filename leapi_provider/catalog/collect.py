"""The wait of a batch, in its worker: read its pipelines in submission order, transfer each round's
finished ones at once.

Each read that finds a pipeline finished is also the read its transfer uses (fresh temp URLs), so a
pipeline costs one status read, plus one per poll round that found the head of the queue still running
(:class:`leapi.polling.InOrderPoll`). The deferred part of the wait reads one pipeline per round
(:class:`leapi.polling.FinishProbe`, in the trigger) and resumes the task to read and transfer the
finished ones here. With webhooks (:meth:`BatchCollector.read_hinted`), the task reads exactly the
pipelines LEAPI's webhooks said are done, and none past them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from leapi.errors import LeapiNotFoundError
from leapi.models import Pipeline, PipelineStatus
from leapi.polling import InOrderPoll, poll_schedule
from leapi_provider.catalog.batch import CatalogBatch
from leapi_provider.catalog.transfer import BatchResults, transfer_pipelines
from leapi_provider.hooks.leapi import LeapiHook

log = logging.getLogger(__name__)

_NOT_FOUND = "pipeline not found (unknown id, or it belongs to another API key)"


class BatchCollector:
    """Reads a batch's pending pipelines and transfers the finished ones, round by round.

    :param batch: the batch.
    :param hook: the task's one hook.
    :param pipeline_ids: every accepted pipeline of the batch, in submission order.
    :param results: the batch's result rows so far (pipelines with rows are not read again).
    """

    def __init__(
        self, batch: CatalogBatch, hook: LeapiHook, pipeline_ids: list[int], results: BatchResults
    ) -> None:
        self.batch = batch
        self.hook = hook
        self.pipeline_ids = pipeline_ids
        self.results = results
        transferred = results.transferred
        self.poll = InOrderPoll([pid for pid in pipeline_ids if pid not in transferred])
        self.started_at = _first_submit(batch)
        #: The ids the last round read and found still running.
        self.still_running: list[int] = []

    @property
    def pending(self) -> list[int]:
        return self.poll.pending

    def round(self, *, through: int | None = None, beyond: bool = True) -> int:
        """One round: read in order (every pipeline up to ``through``, then, if ``beyond``, on while
        finished), transfer what finished; the images copied. :attr:`still_running` lists the ids this
        round read and found running."""
        finished: list[Pipeline] = []
        self.still_running = []
        for pipeline_id in self.poll.round(through=through, beyond=beyond):
            try:
                pipeline = self.hook.get_pipeline(pipeline_id)
            except LeapiNotFoundError:
                pipeline = Pipeline(id=pipeline_id, status=PipelineStatus.ERROR, error=_NOT_FOUND)
            self.poll.record(pipeline)
            if self.poll.is_finished(pipeline_id):
                finished.append(pipeline)
            else:
                self.still_running.append(pipeline_id)
        if not finished:
            return 0
        copied = transfer_pipelines(self.batch, self.hook, finished, self.results)
        log.info(
            "%s: %d pipeline(s) finished and transferred (%d image(s)); %d of %d still running",
            self.batch,
            len(finished),
            copied,
            len(self.pending),
            len(self.pipeline_ids),
        )
        return copied

    def read_hinted(self, through: int) -> list[int]:
        """Read the pending pipelines up to ``through`` (webhooks said they are done) and none past it,
        transfer the finished ones; the ids found still running (their hints were premature: they must be
        re-armed, so that their true webhooks count)."""
        self.round(through=through, beyond=False)
        return list(self.still_running)

    def wait(
        self, seconds: float, *, poll_interval: float, initial_poll_interval: float, resume_cost: float = 0.0
    ) -> None:
        """Poll rounds in this worker until every pipeline is transferred or ``seconds`` pass.

        :param resume_cost: seconds a deferral costs before the task can resume (Airflow's reporting
            window, a task start): a wait whose rest is due within that goes on once for that long,
            rather than defer for less than it costs.
        """
        deadline = time.monotonic() + seconds
        extended = False
        for gap in self._gaps(poll_interval, initial_poll_interval):
            if not self.pending:
                return
            if time.monotonic() + gap > deadline:
                due = self.estimated_remaining_s()
                if extended or due is None or due > resume_cost:
                    return
                deadline, extended = deadline + resume_cost, True
            time.sleep(gap)
            self.round()

    def _gaps(self, poll_interval: float, initial: float) -> Iterator[float]:
        return poll_schedule(poll_interval, initial, waited=time.time() - self.started_at)

    def estimated_remaining_s(self) -> float | None:
        """Seconds until the last pending pipeline finishes, at the rate seen since the first submit;
        ``None`` before any finished."""
        return self.due_in(len(self.pending))

    def due_in(self, count: int) -> float | None:
        """Seconds until ``count`` more pipelines should have finished, at the rate seen since the first
        submit; ``None`` before any finished."""
        finished = len(self.pipeline_ids) - len(self.pending)
        if not finished:
            return None
        return max(time.time() - self.started_at, 0.0) / finished * count

    def min_finished(self, resumes: int) -> int:
        """How many more pipelines should finish before a deferred wait resumes the task: the batch in
        ``resumes`` parts (at least one, at most what is pending)."""
        return max(1, min(len(self.pending), math.ceil(len(self.pipeline_ids) / max(resumes, 1))))


def _first_submit(batch: CatalogBatch) -> float:
    """Wall-clock time of the batch's first submit (now, when nothing is recorded)."""
    stamps = [r["submitted_at"] for r in batch.submitted_records() if r["submitted_at"] is not None]
    if not stamps:
        return time.time()
    first: datetime = min(stamps)
    return (first if first.tzinfo else first.replace(tzinfo=UTC)).timestamp()
