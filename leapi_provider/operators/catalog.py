"""The catalog's operators: ``plan``, one ``batch`` per batch file (submit, wait, transfer), ``finalize``.

A batch is one task, like dbt Cloud's operator submits and completes a job in one task: its wait defers
to the triggerer, and each resume transfers what finished (a batch transfers as its pipelines finish,
and defers again for the rest). Retries and resumes are safe because every step is recorded in the run's
folder (:mod:`leapi_provider.catalog.batch`): nothing accepted is submitted again, nothing transferred
is transferred again.

Layers: this module is imported when DAG files are parsed (by :func:`leapi_provider.catalog.add_catalog_tasks`),
so it imports only Airflow at module level; the catalog's data modules (pyarrow), the hook and the
triggers are imported inside the methods that run in a worker. The data modules never import this one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from leapi_provider.catalog.batch import CatalogBatch
    from leapi_provider.catalog.collect import BatchCollector
    from leapi_provider.catalog.settings import CatalogSettings
    from leapi_provider.catalog.storage import CatalogRun
    from leapi_provider.hooks.leapi import LeapiHook

#: XCom key of the batch's pipeline ids (pushed right after submitting, before any wait).
XCOM_PIPELINE_IDS_KEY = "pipeline_ids"
#: XCom keys of the plan's counts and run folder (its return value is the list of batch URIs, mapped over).
XCOM_PLAN_COUNTS_KEY = "counts"
XCOM_RUN_DIR_KEY = "run_dir"
DEFAULT_BATCH_TIMEOUT_S = 6 * 60 * 60.0
DEFAULT_BATCH_POLL_INTERVAL_S = 15.0
#: The first poll of a batch comes this soon after its submit (small images finish in seconds).
INITIAL_BATCH_POLL_INTERVAL_S = 2.0
#: Seconds a resumed task takes to start (a process, the DAG parse): part of what a deferral costs.
TASK_START_S = 5.0
#: A deferred wait first reads when this fraction of the time its pipelines need (at the rate seen so
#: far) has passed: a little early, as the rate is an estimate.
DUE_FRACTION = 0.8


@dataclass(frozen=True)
class _Webhooks:
    """A batch task instance's webhook channel: the ``notify_url`` its pipelines carry, and the trigger's
    hint source (``WebhookHintSource.serialize()``)."""

    notify_url: str
    hints: dict[str, str]

    @classmethod
    def of_task(cls, context: Context, conn_id: str | None) -> _Webhooks | None:
        """The channel of the task instance in ``context`` (the same for each try); ``None`` without
        ``conn_id``."""
        if not conn_id:
            return None
        from leapi_provider.webhooks.hints import WebhookHintSource
        from leapi_provider.webhooks.hook import LeapiWebhooksHook
        from leapi_provider.webhooks.tokens import channel_for_task

        ti = context["ti"]
        map_index = -1 if ti.map_index is None else ti.map_index
        channel = channel_for_task(ti.dag_id, ti.run_id, ti.task_id, map_index)
        settings = LeapiWebhooksHook(conn_id).get_settings()
        hints = WebhookHintSource(channel=channel, conn_id=conn_id).serialize()
        return cls(notify_url=settings.notify_url(channel), hints=hints)


class _CatalogOperator(BaseOperator):
    """What the catalog's operators share: the DAG author's connections, and the run's settings."""

    ui_color = "#c7e9f1"

    def __init__(
        self, *, leapi_conn_id: str = "leapi_default", aws_conn_id: str | None = "aws_default", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.leapi_conn_id = leapi_conn_id
        self.aws_conn_id = aws_conn_id
        self._settings: CatalogSettings | None = None

    def run_context(self, context: Context) -> tuple[CatalogSettings, CatalogRun]:
        """The run's settings (its params and these connections) and identity; once per execution."""
        from leapi_provider.catalog.storage import run_context

        settings, run = run_context(context, leapi_conn_id=self.leapi_conn_id, aws_conn_id=self.aws_conn_id)
        self._settings = settings
        return settings, run


class LeapiCatalogBatchOperator(_CatalogOperator):
    """Submit a catalog batch, transfer its results as its pipelines finish.

    Each execution (the first, and each resume) submits what is not accepted yet, then waits in the
    worker for up to ``defer_after`` seconds, transferring each round's finished pipelines, then defers:

    * to a :class:`~leapi_provider.triggers.leapi.LeapiPipelineTrigger` that resumes the task when about a
      quarter of the batch finished (``min_finished``), which transfers those and defers again;
    * or, when the account's rate limit makes the next submit wait longer than ``defer_after``, to a
      ``DateTimeTrigger`` at that slot (the learned rate travels with the deferral).

    No trigger fires within Airflow's reporting window after its deferral
    (:func:`~leapi_provider.triggers.leapi.earliest_resume`). ERROR pipelines do not fail the task: their
    images get ``error`` rows. A wait that times out fails the task; its retry reconnects.

    With ``webhook_conn_id`` (and ``deferrable``), every pipeline carries the ``notify_url`` of the task
    instance's channel (the same on every try), and the batch defers right after submitting: its trigger
    wakes on LEAPI's webhooks, and each resume reads exactly the pipelines they said are done (those
    found still running are handed back, ``rearm_ids``, so that their true webhooks count). Polling goes
    on as a fallback, at least ``WEBHOOK_FALLBACK_POLL_INTERVAL_S`` apart. docs/catalog.md, "Webhooks".

    :param batch_uri: the batch file the plan wrote (templated; the plan's output is mapped over it).
    :param leapi_conn_id: the LEAPI connection (fixed by the DAG author).
    :param aws_conn_id: the connection of ``s3://`` locations (fixed by the DAG author).
    :param deferrable: wait in the triggerer instead of a worker slot (default ``[operators]
        default_deferrable``); when ``False`` the whole wait polls in the worker.
    :param defer_after: seconds to wait in the worker before deferring; ``None`` takes the run's
        ``defer_after`` param.
    :param poll_interval: the longest gap between polls, in seconds.
    :param timeout: how long to wait for the batch's pipelines, in seconds, from its first submit.
    :param webhook_conn_id: opt-in webhook-driven waits: the ``leapi_webhooks`` connection of the receiver
        mounted on the api-server (:mod:`leapi_provider.webhooks`); ``None``: poll only. Ignored when not
        ``deferrable`` (the worker then polls).
    """

    template_fields: Sequence[str] = ("batch_uri",)

    def __init__(
        self,
        *,
        batch_uri: str,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        defer_after: float | None = None,
        poll_interval: float = DEFAULT_BATCH_POLL_INTERVAL_S,
        timeout: float = DEFAULT_BATCH_TIMEOUT_S,
        webhook_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_uri = batch_uri
        self.deferrable = deferrable
        self.defer_after = defer_after
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.webhook_conn_id = webhook_conn_id
        self._webhooks: _Webhooks | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        return self._work(context, waited=False)

    def resume_submit(
        self, context: Context, event: Any = None, rate_limit: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resume at the rate limit's next slot (a ``DateTimeTrigger``), with what the limiter learned."""
        return self._work(context, waited=False, rate_limit=rate_limit)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the wait's trigger: validate its event, then transfer what finished."""
        from leapi.errors import LeapiError, LeapiWaitTimeoutError
        from leapi_provider.exceptions import fail_on_permanent_errors
        from leapi_provider.triggers.leapi import EVENT_TIMEOUT, validate_pipeline_event

        with fail_on_permanent_errors():
            event = validate_pipeline_event(event)
        if event["status"] == EVENT_TIMEOUT:
            raise LeapiWaitTimeoutError(
                f"{event['message']} after {self.timeout:.0f}s; a retry of this task reconnects to them "
                "(nothing is submitted twice)",
                pending_ids=event["pending_ids"],
            )
        if event["pending_ids"] and event["ready_through"] is None:
            raise LeapiError(f"Waiting for the batch's LEAPI pipelines failed: {event['message']}")
        self.log.info("Resumed from the triggerer: %s", event["message"])
        return self._work(
            context, waited=True, ready_through=event["ready_through"], hinted=bool(event.get("hinted"))
        )

    def _work(
        self,
        context: Context,
        *,
        waited: bool,
        rate_limit: dict[str, Any] | None = None,
        ready_through: int | None = None,
        hinted: bool = False,
    ) -> dict[str, Any]:
        """One execution: submit what is left, collect and transfer what finished, defer or finish.

        :param waited: the batch already waited in the triggerer: this execution transfers what finished
            and waits in the worker only if the rest is due sooner than a deferral would take.
        :param hinted: ``ready_through`` comes from webhooks: read up to it and no further.
        """
        from leapi_provider.catalog.batch import CatalogBatch
        from leapi_provider.catalog.collect import BatchCollector
        from leapi_provider.catalog.sizing import batch_pace
        from leapi_provider.catalog.submit import submit_batch
        from leapi_provider.catalog.transfer import BatchResults, transfer_pipelines
        from leapi_provider.exceptions import fail_on_permanent_errors
        from leapi_provider.hooks.leapi import LeapiHook

        settings, run = self.run_context(context)
        batch = CatalogBatch.of(settings, run, self.batch_uri)
        in_worker = settings.defer_after if self.defer_after is None else self.defer_after
        self._webhooks = _Webhooks.of_task(context, self.webhook_conn_id) if self.deferrable else None
        notify_url = self._webhooks.notify_url if self._webhooks else None
        # A deferrable batch never waits longer than defer_after for a rate-limit slot: it defers.
        budget = in_worker if self.deferrable else None
        with (
            fail_on_permanent_errors(),
            LeapiHook(
                self.leapi_conn_id, rate_limit_budget=budget, paced_per_minute=batch_pace(settings)
            ) as hook,
        ):
            if rate_limit:
                hook.get_conn().account_limiter.restore(rate_limit)
            outcome = submit_batch(
                batch, hook, max_wait=in_worker if self.deferrable else None, notify_url=notify_url
            )
            context["ti"].xcom_push(key=XCOM_PIPELINE_IDS_KEY, value=outcome.pipeline_ids)
            if outcome.resume_at is not None:
                self._defer_submit(hook, outcome.resume_at)
            results = BatchResults(batch)
            collector = BatchCollector(batch, hook, outcome.pipeline_ids, results)
            self._wait(
                batch,
                collector,
                0.0 if waited or self._webhooks else in_worker,
                ready_through=ready_through,
                hinted=hinted,
            )
            transfer_pipelines(batch, hook, [], results)  # (the REJECTED images' rows, if none was written)
        return {"batch": batch.index, "pipelines": len(outcome.pipeline_ids), "results_uri": results.uri}

    def _wait(
        self,
        batch: CatalogBatch,
        collector: BatchCollector,
        in_worker: float,
        *,
        ready_through: int | None,
        hinted: bool = False,
    ) -> None:
        """Collect what the trigger found ready (``ready_through``; with ``hinted``, exactly the pipelines
        up to it), wait in the worker (``in_worker`` seconds, or the whole timeout when not deferrable;
        never with webhooks), then defer for the rest; raises when the batch's time is up."""
        from leapi.errors import LeapiRateLimitError, LeapiWaitTimeoutError
        from leapi_provider.triggers.leapi import earliest_resume

        end_time = collector.started_at + self.timeout
        seconds = min(in_worker, end_time - time.time()) if self.deferrable else end_time - time.time()
        resume_cost = earliest_resume() - time.time() + TASK_START_S
        rearm: list[int] = []
        try:
            if ready_through is not None and hinted:
                rearm = collector.read_hinted(ready_through)
            elif ready_through is not None:
                collector.round(through=ready_through)
            if self._webhooks is None:
                collector.wait(
                    seconds,
                    poll_interval=self.poll_interval,
                    initial_poll_interval=INITIAL_BATCH_POLL_INTERVAL_S,
                    resume_cost=resume_cost if self.deferrable else 0.0,
                )
        except LeapiRateLimitError as exc:
            if not self.deferrable:
                raise
            self.log.info("%s: the next status read must wait for the rate limit (%s): deferring", batch, exc)
        if not collector.pending:
            return
        if self.deferrable and time.time() < end_time:
            self._defer_wait(collector, end_time, rearm_ids=rearm)
        raise LeapiWaitTimeoutError(
            f"{len(collector.pending)} of {len(collector.pipeline_ids)} LEAPI pipeline(s) of this batch still "
            f"PROCESSING after {self.timeout:.0f}s; a retry of this task reconnects to them (nothing is "
            "submitted twice)",
            pending_ids=collector.pending,
        )

    def _defer_wait(self, collector: BatchCollector, end_time: float, *, rearm_ids: list[int]) -> None:
        from leapi_provider.catalog.sizing import RESUMES_PER_BATCH, triggerer_pace
        from leapi_provider.operators.leapi import deferral_timeout
        from leapi_provider.triggers.leapi import LeapiPipelineTrigger, earliest_resume

        pending, total = len(collector.pending), len(collector.pipeline_ids)
        wanted = collector.min_finished(RESUMES_PER_BATCH)
        now = time.time()
        # No read before the wanted pipelines are due at the rate seen so far (an early read is wasted),
        # nor within Airflow's reporting window. With webhooks the trigger reads nothing (the hints
        # decide when to resume): only the window holds it.
        due = 0.0 if self._webhooks else collector.due_in(wanted) or 0.0
        not_before = max(earliest_resume(now), now + min(due, end_time - now) * DUE_FRACTION)
        self.log.info(
            "Deferring until %d more of %d pending pipeline(s) finish (of %d); first read in %.0fs",
            wanted,
            pending,
            total,
            not_before - now,
        )
        self.defer(
            trigger=LeapiPipelineTrigger(
                pipeline_ids=collector.pending,
                end_time=end_time,
                leapi_conn_id=self.leapi_conn_id,
                initial_poll_interval=INITIAL_BATCH_POLL_INTERVAL_S,
                not_before=not_before,
                started_at=collector.started_at,
                min_finished=wanted,
                paced_per_minute=triggerer_pace(collector.batch.settings),
                **self._trigger_wait_kwargs(rearm_ids),
            ),
            method_name="execute_complete",
            timeout=deferral_timeout(end_time, self.poll_interval),
        )

    def _trigger_wait_kwargs(self, rearm_ids: list[int]) -> dict[str, Any]:
        """The trigger's polling gap and, with webhooks, its hint source and the hints to hand back."""
        if self._webhooks is None:
            return {"poll_interval": self.poll_interval}
        from leapi_provider.operators.leapi import WEBHOOK_FALLBACK_POLL_INTERVAL_S

        return {
            "poll_interval": max(self.poll_interval, WEBHOOK_FALLBACK_POLL_INTERVAL_S),
            "webhook_hints": self._webhooks.hints,
            "rearm_ids": rearm_ids,
        }

    def _defer_submit(self, hook: LeapiHook, resume_at: float) -> None:
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        from leapi_provider.triggers.leapi import earliest_resume

        now = time.time()
        moment = max(resume_at, earliest_resume(now))
        self.log.info("Deferring the rest of the submits %.0fs, to the rate limit's next slot", moment - now)
        self.defer(
            trigger=DateTimeTrigger(moment=datetime.fromtimestamp(moment, UTC)),
            method_name="resume_submit",
            kwargs={"rate_limit": hook.get_conn().account_limiter.snapshot()},
            timeout=timedelta(seconds=moment - now + 300),
        )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """The batch's sources (the folders that hold them) in; the ``images`` location out."""
        from leapi_provider import manifests
        from leapi_provider.catalog.storage import storage_path
        from leapi_provider.lineage import dataset_of, folder_datasets, operator_lineage

        if self._settings is None:
            return operator_lineage()
        batch = manifests.read_parquet(storage_path(self.batch_uri, self._settings.aws_conn_id))
        sources = dict.fromkeys(batch["source_url"].to_pylist())
        return operator_lineage(inputs=folder_datasets(sources), outputs=[dataset_of(self._settings.images)])


class LeapiCatalogPlanOperator(_CatalogOperator):
    """The catalog's ``plan`` task (:func:`leapi_provider.catalog.plan.plan_run`): validate the manifest,
    drop unchanged images, check credits, write the batches; returns the batch URIs (mapped over).

    A classic operator rather than an ``@task`` so that it can declare its lineage (the manifest in).

    :param leapi_conn_id: the LEAPI connection (its usage answer guards the credits).
    :param aws_conn_id: the connection of ``s3://`` locations.
    """

    def execute(self, context: Context) -> list[str]:
        from leapi_provider.catalog.plan import plan_run
        from leapi_provider.exceptions import fail_on_permanent_errors

        settings, run = self.run_context(context)
        with fail_on_permanent_errors():
            plan = plan_run(settings, run, max_map_length=conf.getint("core", "max_map_length"))
        context["ti"].xcom_push(key=XCOM_PLAN_COUNTS_KEY, value=plan["counts"])
        context["ti"].xcom_push(key=XCOM_RUN_DIR_KEY, value=plan["run_dir"])
        return plan["batches"]

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        from leapi_provider.lineage import dataset_of, operator_lineage

        if self._settings is None:
            return operator_lineage()
        return operator_lineage(inputs=[dataset_of(self._settings.manifest)])


class LeapiCatalogFinalizeOperator(_CatalogOperator):
    """The catalog's ``finalize`` task (:func:`leapi_provider.catalog.finalize.finalize_run`): the result
    table (one row per manifest row), its reports and the feed export, then an ``Asset`` event for each
    ``Asset`` outlet; runs whatever the batches did.

    Lineage: the manifest and the ``images`` in; the result table (and the feed export) out.

    :param export_feed: write the feed export (the ``export`` param).
    """

    def __init__(self, *, export_feed: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.export_feed = export_feed

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk import Asset

        from leapi_provider.catalog.finalize import finalize_run

        settings, run = self.run_context(context)
        result = finalize_run(settings, run, export_feed=self.export_feed)
        for outlet in self.outlets or []:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = {
                    "results": settings.results,
                    "run_date": run.run_date,
                    "files": result["result_files"][:100],
                    "rows": result["summary"]["rows"],
                }
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        from leapi_provider.lineage import dataset_of, operator_lineage

        settings = self._settings
        if settings is None or settings.dry_run:
            return operator_lineage()
        outputs = [dataset_of(settings.results)]
        if self.export_feed and settings.export:
            outputs.append(dataset_of(settings.export))
        return operator_lineage(
            inputs=[dataset_of(settings.manifest), dataset_of(settings.images)], outputs=outputs
        )
