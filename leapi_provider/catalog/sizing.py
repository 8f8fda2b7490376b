"""How many batches a run is cut into, and what a run costs: the cost model of docs/catalog.md, as code.

A batch task has a fixed cost whatever its size (a task start and a DAG parse in a worker, another start
for each resume after a deferral), while its images cost the API's time, which does not depend on how
they are batched. So batches are as large as keeps the pool busy, and no larger than the API time a
batch should need: a failed batch then redoes little, and progress shows in the UI.

:func:`estimate_run` gives the figures of the model (requests of each kind, run time at the account's
rate, task starts, triggers, metadata rows, result table size) for a manifest size; the scale bench
compares what it measured with them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from leapi_provider.catalog.settings import BATCHES_PER_SLOT, CatalogSettings

#: Status reads per pipeline a batch's wait is planned at: one read that finds it finished, plus the
#: rounds that found the head of the queue still running and the probes of its deferred waits (measured
#: 1.1-1.2; the target is 1.3, see docs/benchmarks.md).
STATUS_READS_PER_PIPELINE = 1.2
#: A deferred wait resumes its batch when about this fraction of its pending pipelines finished (the
#: trigger's ``min_finished``), so a batch transfers in at most about this many rounds plus the last.
RESUMES_PER_BATCH = 4
#: Bytes one row of the result table takes in Parquet (zstd), about: measured 33-35 by the scale bench
#: (distinct ids and URLs, one preset), so 40 leaves room for longer ids and URLs.
RESULT_ROW_BYTES = 40
#: Seconds a task start costs a worker slot (a process, the DAG parse, the imports and connections): the
#: operators' figure (``TASK_START_S``); several times more on an overloaded machine.
TASK_START_S = 5.0
#: Seconds one submit holds its batch's worker (the request, and the record of the accepted pipeline).
SUBMIT_S = 0.3
#: Seconds a deferral costs before its task runs again: Airflow's reporting window (10 s, the trigger's
#: ``earliest_resume``) and a task start.
RESUME_S = 15.0
#: Seconds of a transfer thread one small image takes (a verified download and an upload; measured
#: 0.05-0.2 s on the scale bench's 2 loaded cores): the transfers' share of the worker slots.
TRANSFER_S_PER_IMAGE = 0.1
#: Tasks a run starts once each whatever its size, one after another: the plan, the first batch, finalize.
SERIAL_TASK_STARTS = 3
#: The triggerer's share of a declared ``api_requests_per_minute``: the reads of the deferred batches'
#: waits (a probe a round each). The batches running in the pool's slots share the rest, submits and
#: reads alike (:func:`batch_pace`).
TRIGGERER_RATE_SHARE = 0.2


def batch_pace(settings: CatalogSettings) -> float | None:
    """Requests a minute one running batch may send, its submits and its reads alike: its share of a
    declared ``api_requests_per_minute`` (at most ``parallel_batches`` run at once: the pool's slots);
    ``None`` when none is declared (the client learns the limit from the API's refusals)."""
    if settings.api_requests_per_minute is None:
        return None
    return settings.api_requests_per_minute * (1 - TRIGGERER_RATE_SHARE) / settings.parallel_batches


def triggerer_pace(settings: CatalogSettings) -> float | None:
    """Requests a minute the triggerer may send for the deferred batches' waits (one limiter per account in
    the triggerer, shared by all of them); ``None`` when no limit is declared."""
    if settings.api_requests_per_minute is None:
        return None
    return settings.api_requests_per_minute * TRIGGERER_RATE_SHARE


def batch_count(
    *,
    images: int,
    pipelines: int,
    parallel_batches: int,
    min_images_per_batch: int,
    max_batches: int,
    requests_per_minute: int,
    batch_api_minutes: float,
) -> int:
    """How many batches (mapped tasks) to cut ``images`` (in ``pipelines``) into.

    * At least :data:`~leapi_provider.catalog.settings.BATCHES_PER_SLOT` per slot that runs batches at
      once (``parallel_batches``, the ``leapi`` pool's size), so a slot that finishes early picks up
      another batch;
    * at least as many as keeps each batch within ``batch_api_minutes`` of API time at the account's
      rate (a submit and :data:`STATUS_READS_PER_PIPELINE` reads per pipeline);
    * but never fewer than ``min_images_per_batch`` images each (200 images make 2 batches, not 8), nor
      more than ``max_batches`` (the param and ``[core] max_map_length``).

    >>> batch_count(images=1000, pipelines=100, parallel_batches=4, min_images_per_batch=100,
    ...             max_batches=1024, requests_per_minute=120, batch_api_minutes=10)
    8
    >>> batch_count(images=100_000, pipelines=10_000, parallel_batches=4, min_images_per_batch=100,
    ...             max_batches=1024, requests_per_minute=120, batch_api_minutes=10)
    19
    >>> batch_count(images=200, pipelines=20, parallel_batches=4, min_images_per_batch=100,
    ...             max_batches=1024, requests_per_minute=120, batch_api_minutes=10)
    2
    """
    if images <= 0:
        return 1
    by_size = math.ceil(images / max(min_images_per_batch, 1))
    by_api = math.ceil(
        pipelines * (1 + STATUS_READS_PER_PIPELINE) / max(requests_per_minute * batch_api_minutes, 1e-9)
    )
    wanted = max(parallel_batches * BATCHES_PER_SLOT, by_api)
    return max(1, min(by_size, wanted, max_batches))


@dataclass(frozen=True)
class RunEstimate:
    """The cost model's figures for one run (see docs/catalog.md, "What a run costs")."""

    images: int
    pipelines: int
    batches: int
    submits: int
    status_reads: int
    usage_reads: int
    api_requests: int
    requests_per_image: float
    #: Minutes the account's rate limit alone needs for the requests (the run's lower bound).
    api_minutes: float
    #: Rate-limit deferrals of all batches: each batch defers when its next slot is more than
    #: ``defer_after`` away, about once per minute of its submitting.
    rate_limit_deferrals: int
    #: Partial-completion deferrals of all batches (each resume transfers what finished).
    wait_deferrals: int
    task_starts: int
    #: Hours of worker slots spent on task starts and in-worker waits (transfers: the next figure).
    worker_slot_hours: float
    #: Hours of worker slots spent transferring (images x :data:`TRANSFER_S_PER_IMAGE` /
    #: ``transfer_concurrency``).
    transfer_slot_hours: float
    #: What the run cannot beat: the account's rate limit for its requests (when it is limited) or the
    #: engine for its images (when its speed is given), whichever is longer, plus the tasks that run one
    #: after another (:data:`SERIAL_TASK_STARTS`).
    run_seconds: float
    triggers: int
    task_instances: int
    xcom_rows: int
    result_rows: int
    #: Result downloads (``GET`` of the temporary URLs: not API requests), one per image that succeeds.
    downloads: int
    result_table_mb: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_run(
    images: int,
    settings: CatalogSettings,
    *,
    task_start_s: float = TASK_START_S,
    submit_s: float = SUBMIT_S,
    status_reads_per_pipeline: float = STATUS_READS_PER_PIPELINE,
    rate_limited: bool = True,
    engine_images_per_s: float | None = None,
) -> RunEstimate:
    """The cost model for a run of ``images`` (one operation, every image to submit) under ``settings``.

    :param task_start_s: seconds a task start costs a worker slot (process, DAG parse, connections).
    :param submit_s: seconds one submit holds the batch's worker.
    :param status_reads_per_pipeline: what the wait costs per pipeline (measure it: docs/benchmarks.md).
    :param rate_limited: the API enforces the account's rate (``settings.sizing_requests_per_minute``;
        ``False``: an account or a server without a limit; the batches are still sized by that figure, but
        nothing waits for it). Declared (``api_requests_per_minute``), the batches pace themselves at
        :func:`batch_pace`; not declared, they learn it from refusals and defer for it.
    :param engine_images_per_s: how fast the API enhances the images (``None``: not modelled); bounds
        :attr:`RunEstimate.run_seconds` when the rate limit does not, and sets how long a batch waits.
    """
    rate = settings.sizing_requests_per_minute
    # (paced, a batch's workers get their share of what the triggerer does not use)
    usable_rate = rate * (1 - TRIGGERER_RATE_SHARE) if batch_pace(settings) else rate
    pipelines = math.ceil(images / settings.urls_per_pipeline)
    batches = batch_count(
        images=images,
        pipelines=pipelines,
        parallel_batches=settings.parallel_batches,
        min_images_per_batch=settings.min_images_per_batch,
        max_batches=settings.max_batches,
        requests_per_minute=rate,
        batch_api_minutes=settings.batch_api_minutes,
    )
    status_reads = round(pipelines * status_reads_per_pipeline)
    requests = pipelines + status_reads + (0 if settings.quota_guard == "off" else 1)
    rate_limit_deferrals = _rate_limit_deferrals(pipelines, batches, settings) if rate_limited else 0
    wait_deferrals, batch_work_s = _batch_waits(
        pipelines,
        batches,
        settings,
        submit_s=submit_s,
        status_reads_per_pipeline=status_reads_per_pipeline,
        rate_limited=rate_limited,
        engine_images_per_s=engine_images_per_s,
    )
    starts = 2 + batches + rate_limit_deferrals + wait_deferrals
    slot_seconds = starts * task_start_s + batch_work_s
    bound_s = max(
        requests / usable_rate * 60 if rate_limited else 0.0,
        images / engine_images_per_s if engine_images_per_s else 0.0,
    )
    return RunEstimate(
        images=images,
        pipelines=pipelines,
        batches=batches,
        submits=pipelines,
        status_reads=status_reads,
        usage_reads=0 if settings.quota_guard == "off" else 1,
        api_requests=requests,
        requests_per_image=round(requests / max(images, 1), 3),
        api_minutes=round(requests / rate, 1),
        rate_limit_deferrals=rate_limit_deferrals,
        wait_deferrals=wait_deferrals,
        task_starts=starts,
        worker_slot_hours=round(slot_seconds / 3600, 3),
        transfer_slot_hours=round(images * TRANSFER_S_PER_IMAGE / settings.transfer_concurrency / 3600, 3),
        run_seconds=round(bound_s + SERIAL_TASK_STARTS * task_start_s, 1),
        triggers=rate_limit_deferrals + wait_deferrals,
        task_instances=batches + 2,
        xcom_rows=3 + 2 * batches + 1,
        result_rows=images,
        downloads=images,
        result_table_mb=round(images * RESULT_ROW_BYTES / 1e6, 2),
    )


def _batch_waits(
    pipelines: int,
    batches: int,
    settings: CatalogSettings,
    *,
    submit_s: float,
    status_reads_per_pipeline: float,
    rate_limited: bool,
    engine_images_per_s: float | None,
) -> tuple[int, float]:
    """``(partial-completion deferrals, worker-slot seconds besides task starts)`` of all the batches.

    Each batch holds its slot for every submit (paced: its whole submitting), its first wait in the
    worker (resumes transfer and defer again) and the rest of that wait when it is due sooner than a
    deferral would cost; paced, also for its status reads at its share of the rate.
    """
    span_s, submitting_s, reading_s = _batch_span(
        pipelines / batches,
        settings,
        parallel=min(settings.parallel_batches, batches),
        submit_s=submit_s,
        reads_per_pipeline=status_reads_per_pipeline,
        rate_limited=rate_limited,
        engine_images_per_s=engine_images_per_s,
    )
    rest_s = span_s - submitting_s - settings.defer_after
    wait_deferrals = batches * _wait_deferrals(span_s, rest_s)
    in_worker_s = settings.defer_after + (max(rest_s, 0.0) if not wait_deferrals else 0.0)
    if rate_limited and _paced_evenly(settings):
        return wait_deferrals, batches * (submitting_s + in_worker_s + reading_s)
    # (a learned limit's waits, or a pace's bursts, past defer_after are deferred)
    return wait_deferrals, pipelines * submit_s + batches * in_worker_s


def _batch_span(
    pipelines: float,
    settings: CatalogSettings,
    *,
    parallel: int,
    submit_s: float,
    reads_per_pipeline: float,
    rate_limited: bool,
    engine_images_per_s: float | None,
) -> tuple[float, float, float]:
    """``(span, submitting, reading)``: seconds from a batch's first submit to its last pipeline's end,
    of its submitting, and of its status reads at its share of the rate (a rate-limited batch reads in its
    worker as its pipelines finish; unlimited, the reads take no time worth counting), for a batch of
    ``pipelines`` running beside ``parallel - 1`` others."""
    # (requests a second of one batch)
    share = (batch_pace(settings) or settings.sizing_requests_per_minute / parallel) / 60
    submitting = pipelines / share if rate_limited else pipelines * submit_s
    engine = (
        pipelines * settings.urls_per_pipeline / (engine_images_per_s / parallel)
        if engine_images_per_s
        else 0.0
    )
    reading = pipelines * reads_per_pipeline / share if rate_limited else 0.0
    return max(submitting, engine), submitting, reading


def _wait_deferrals(span_s: float, rest: float) -> int:
    """A batch's partial-completion deferrals: the ``rest`` it still waits for after submitting and its
    first ``defer_after`` in the worker, a quarter of the batch (``RESUMES_PER_BATCH``) per deferral, or
    what a deferral costs (:data:`RESUME_S`) when that is longer. A rest due within what a deferral costs
    is waited in the worker (the operator's ``resume_cost``)."""
    if rest <= RESUME_S:
        return 0
    return min(RESUMES_PER_BATCH, math.ceil(rest / max(span_s / RESUMES_PER_BATCH, RESUME_S)))


def _paced_evenly(settings: CatalogSettings) -> bool:
    """A declared rate whose even gap a batch waits in its worker (no longer than ``defer_after``; a
    longer one goes in bursts of a minute's share, and defers between them)."""
    pace = batch_pace(settings)
    return pace is not None and 60 / pace <= settings.defer_after


def _rate_limit_deferrals(pipelines: int, batches: int, settings: CatalogSettings) -> int:
    """The pool's batches share the rate; one batch submits at rate / parallel a minute, and defers once
    per minute of its submitting: a limit learned from refusals lets a minute's requests go at once and
    then waits. Paced at a declared rate, no wait is longer than ``defer_after`` (requests are
    ``60 / batch_pace`` s apart), so nothing defers for it."""
    pace = batch_pace(settings)
    if _paced_evenly(settings):
        return 0
    per_batch_rate = pace or settings.sizing_requests_per_minute / max(
        min(settings.parallel_batches, batches), 1
    )
    submit_minutes_per_batch = pipelines / batches / per_batch_rate
    return batches * max(0, math.ceil(submit_minutes_per_batch) - 1)
