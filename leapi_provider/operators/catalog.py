"""The catalog's batch task: submit one batch's pipelines, wait for them (deferred when it pays), transfer.

One task per batch, like dbt Cloud's operator submits and completes a job in one task: a batch task costs a
task start and a DAG parse in a worker, so splitting submit, wait and transfer into three tasks tripled
that cost for nothing. Retries stay safe because every step is recorded in the run's folder: a retried or
resumed task submits nothing that was accepted before (:mod:`leapi_provider.catalog.submit`).

This module is imported when DAG files are parsed: the catalog's data modules (pyarrow) and the HTTP
clients are imported inside the methods that run in a worker.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from leapi_provider.catalog.settings import CatalogSettings
    from leapi_provider.catalog.storage import CatalogRun

#: XCom key of the batch's pipeline ids (pushed right after submitting, before any wait).
XCOM_PIPELINE_IDS_KEY = "pipeline_ids"
DEFAULT_BATCH_TIMEOUT_S = 6 * 60 * 60.0
DEFAULT_BATCH_POLL_INTERVAL_S = 15.0


class LeapiCatalogBatchOperator(BaseOperator):
    """Submit a catalog batch, wait until every pipeline of it is DONE or ERROR, then transfer its results.

    The wait polls in the worker for up to ``defer_after`` seconds (a batch of small images is often done by
    then, and resuming a deferred task costs another task start), then defers to the triggerer: one
    :class:`~leapi_provider.triggers.leapi.LeapiPipelineTrigger` for every pipeline of the batch still
    running. ERROR pipelines do not fail the task: their images get ``error`` rows. A wait that times out
    fails the task; its retry reconnects to the recorded pipelines.

    :param batch_uri: the batch file the plan wrote (templated; the plan's output is mapped over it).
    :param deferrable: wait in the triggerer instead of a worker slot (default ``[operators]
        default_deferrable``); when ``False`` the whole wait polls in the worker.
    :param defer_after: seconds to poll in the worker before deferring; ``None`` takes the run's
        ``defer_after`` param.
    :param poll_interval: the longest gap between polls, in seconds.
    :param timeout: how long to wait for the batch's pipelines, in seconds, from the submit.
    """

    template_fields: Sequence[str] = ("batch_uri",)
    ui_color = "#c7e9f1"

    def __init__(
        self,
        *,
        batch_uri: str,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        defer_after: float | None = None,
        poll_interval: float = DEFAULT_BATCH_POLL_INTERVAL_S,
        timeout: float = DEFAULT_BATCH_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_uri = batch_uri
        self.deferrable = deferrable
        self.defer_after = defer_after
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._settings: CatalogSettings | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        from leapi_provider.catalog.storage import run_context
        from leapi_provider.catalog.submit import submit_batch

        settings, run = run_context(context)
        self._settings = settings
        submitted_at = time.time()
        pipeline_ids = submit_batch(settings, self.batch_uri, run)["pipeline_ids"]
        context["ti"].xcom_push(key=XCOM_PIPELINE_IDS_KEY, value=pipeline_ids)
        if pipeline_ids:
            in_worker = self.timeout
            if self.deferrable:
                defer_after = settings.defer_after if self.defer_after is None else self.defer_after
                in_worker = min(self.timeout, defer_after)
            pending = self._wait_in_worker(settings, pipeline_ids, seconds=in_worker)
            if pending and self.deferrable:
                self._defer(settings, pending, end_time=submitted_at + self.timeout, total=len(pipeline_ids))
            if pending:
                self._raise_timeout(len(pending), len(pipeline_ids))
        return self._transfer(settings, run, pipelines=len(pipeline_ids), deferred=False)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger: validate its event, then transfer (ERROR pipelines included)."""
        from leapi_provider.catalog.storage import run_context
        from leapi_provider.exceptions import LeapiError
        from leapi_provider.triggers.leapi import EVENT_TIMEOUT, validate_pipeline_event

        event = validate_pipeline_event(event)
        if event["status"] == EVENT_TIMEOUT:
            self._raise_timeout(len(event["pending_ids"]), len(event["pipeline_ids"]))
        if event["pending_ids"]:
            raise LeapiError(f"Waiting for the batch's LEAPI pipelines failed: {event['message']}")
        self.log.info("Resumed from the triggerer: %s", event["message"])
        settings, run = run_context(context)
        self._settings = settings
        return self._transfer(settings, run, pipelines=len(event["pipeline_ids"]), deferred=True)

    def _wait_in_worker(
        self, settings: CatalogSettings, pipeline_ids: list[int], *, seconds: float
    ) -> list[int]:
        """Poll until every pipeline is terminal or ``seconds`` pass; the ids still running."""
        from leapi_provider.exceptions import LeapiWaitTimeoutError
        from leapi_provider.hooks.leapi import LeapiHook

        pending: list[int] = []
        with LeapiHook(settings.leapi_conn_id) as hook:
            try:
                hook.wait_for_pipelines(pipeline_ids, timeout=seconds, poll_interval=self.poll_interval)
            except LeapiWaitTimeoutError as exc:
                pending = list(exc.pending_ids)
        self.log.info(
            "%d of %d pipeline(s) finished within %.0fs in the worker",
            len(pipeline_ids) - len(pending),
            len(pipeline_ids),
            seconds,
        )
        return pending

    def _defer(self, settings: CatalogSettings, pending: list[int], *, end_time: float, total: int) -> None:
        from leapi_provider.triggers.leapi import LeapiPipelineTrigger

        self.log.info("Deferring until %d of %d pipeline(s) finish (one trigger)", len(pending), total)
        self.defer(
            trigger=LeapiPipelineTrigger(
                pipeline_ids=pending,
                end_time=end_time,
                leapi_conn_id=settings.leapi_conn_id,
                poll_interval=self.poll_interval,
            ),
            method_name="execute_complete",
        )

    def _raise_timeout(self, pending: int, total: int) -> None:
        from leapi_provider.exceptions import LeapiWaitTimeoutError

        raise LeapiWaitTimeoutError(
            f"{pending} of {total} LEAPI pipeline(s) of this batch still PROCESSING after {self.timeout:.0f}s; "
            "a retry of this task reconnects to them (nothing is submitted twice)"
        )

    def _transfer(
        self, settings: CatalogSettings, run: CatalogRun, *, pipelines: int, deferred: bool
    ) -> dict[str, Any]:
        from leapi_provider.catalog.storage import RunFolder, batch_index_of, uri_of
        from leapi_provider.catalog.transfer import transfer_batch

        index = batch_index_of(self.batch_uri)
        submitted = uri_of(RunFolder(settings, run).submitted(index))
        return {
            "batch": index,
            "pipelines": pipelines,
            "deferred": deferred,
            "results_uri": transfer_batch(settings, submitted, run),
        }

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


class LeapiCatalogPlanOperator(BaseOperator):
    """The catalog's ``plan`` task (:func:`leapi_provider.catalog.tasks.plan_task_callable`): validate the
    manifest, drop unchanged images, check credits, write the batches; returns the batch URIs (mapped over).

    A classic operator rather than an ``@task`` so that it can declare its lineage (the manifest in).
    """

    ui_color = "#c7e9f1"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._settings: CatalogSettings | None = None

    def execute(self, context: Context) -> list[str]:
        from leapi_provider.catalog.storage import run_context
        from leapi_provider.catalog.tasks import plan_task_callable

        self._settings = run_context(context)[0]
        return plan_task_callable()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        from leapi_provider.lineage import dataset_of, operator_lineage

        if self._settings is None:
            return operator_lineage()
        return operator_lineage(inputs=[dataset_of(self._settings.manifest)])


class LeapiCatalogFinalizeOperator(BaseOperator):
    """The catalog's ``finalize`` task (:func:`leapi_provider.catalog.tasks.finalize_task_callable`): the
    result table (one row per manifest row), its reports and the feed export; runs whatever the batches did.

    Lineage: the manifest and the ``images`` in; the result table (and the feed export) out.

    :param export_feed: write the feed export (the ``export`` param).
    """

    ui_color = "#c7e9f1"

    def __init__(self, *, export_feed: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.export_feed = export_feed
        self._settings: CatalogSettings | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        from leapi_provider.catalog.storage import run_context
        from leapi_provider.catalog.tasks import finalize_task_callable

        self._settings = run_context(context)[0]
        return finalize_task_callable(export_feed=self.export_feed)

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
