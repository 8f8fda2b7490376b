"""The catalog's Airflow tasks and :func:`add_catalog_tasks`, which wires them into a DAG.

Imported when DAG files are parsed: the data modules (pyarrow, numpy) are imported inside the callables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from leapi_provider.catalog.settings import LEAPI_POOL
from leapi_provider.operators.catalog import (
    DEFAULT_BATCH_POLL_INTERVAL_S,
    DEFAULT_BATCH_TIMEOUT_S,
    LeapiCatalogBatchOperator,
    LeapiCatalogFinalizeOperator,
    LeapiCatalogPlanOperator,
)

#: XCom keys of the plan's counts and run folder (its return value is the list of batch URIs, mapped over).
XCOM_PLAN_COUNTS_KEY = "counts"
XCOM_RUN_DIR_KEY = "run_dir"


def plan_task_callable() -> list[str]:
    """The ``plan`` task: :func:`~leapi_provider.catalog.plan.plan_run`; returns the batch URIs."""
    from airflow.sdk import conf, get_current_context

    from leapi_provider.catalog.plan import plan_run
    from leapi_provider.catalog.storage import run_context

    context = get_current_context()
    settings, run = run_context(context)
    plan = plan_run(settings, run, max_map_length=conf.getint("core", "max_map_length"))
    context["ti"].xcom_push(key=XCOM_PLAN_COUNTS_KEY, value=plan["counts"])
    context["ti"].xcom_push(key=XCOM_RUN_DIR_KEY, value=plan["run_dir"])
    return plan["batches"]


def finalize_task_callable(*, export_feed: bool = False) -> dict[str, Any]:
    """The ``finalize`` task: :func:`~leapi_provider.catalog.finalize.finalize_run`, then an Asset event."""
    from airflow.sdk import Asset, get_current_context

    from leapi_provider.catalog.finalize import finalize_run
    from leapi_provider.catalog.storage import run_context

    context = get_current_context()
    settings, run = run_context(context)
    result = finalize_run(settings, run, export_feed=export_feed)
    for outlet in getattr(context["task"], "outlets", None) or []:
        if isinstance(outlet, Asset):
            context["outlet_events"][outlet].extra = {
                "results": settings.results,
                "run_date": run.run_date,
                "files": result["result_files"][:100],
                "rows": result["summary"]["rows"],
            }
    return result


def add_catalog_tasks(
    *,
    export_feed: bool = False,
    outlets: Sequence[Any] = (),
    wait_timeout: float = DEFAULT_BATCH_TIMEOUT_S,
    poll_interval: float = DEFAULT_BATCH_POLL_INTERVAL_S,
    deferrable: bool = True,
) -> dict[str, Any]:
    """Add the catalog tasks to the DAG being defined; returns them by name (``plan``, ``batch``, ``finalize``).

    ``plan`` -> ``batch`` (mapped, one :class:`LeapiCatalogBatchOperator` per batch file, pool ``leapi``:
    submit, wait deferred, transfer) -> ``finalize`` (runs whatever the batches did).

    :param export_feed: write the feed export (the ``export`` param) in ``finalize``.
    :param outlets: assets ``finalize`` updates (the result table).
    :param wait_timeout: how long a batch waits for its pipelines, in seconds.
    :param poll_interval: the longest gap between polls of a batch's pipelines, in seconds.
    :param deferrable: wait in the triggerer (after the run's ``defer_after`` seconds in the worker).
    """
    # (classic operators, not @task callables: each declares its OpenLineage datasets)
    plan = LeapiCatalogPlanOperator(task_id="plan")
    batches = LeapiCatalogBatchOperator.partial(
        task_id="batch",
        pool=LEAPI_POOL,
        deferrable=deferrable,
        poll_interval=poll_interval,
        timeout=wait_timeout,
    ).expand(batch_uri=plan.output)
    finalize = LeapiCatalogFinalizeOperator(
        task_id="finalize", trigger_rule="all_done", outlets=list(outlets), export_feed=export_feed
    )
    batches >> finalize
    return {"plan": plan, "batch": batches, "finalize": finalize}
