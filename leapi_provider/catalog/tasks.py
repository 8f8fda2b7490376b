"""The catalog's DAG wiring: :func:`add_catalog_tasks`, the top layer (imported when DAG files are parsed).

Layers, one direction: the ``leapi`` client, then the hook, then the catalog's data modules (settings,
storage, plan, submit, collect, transfer, finalize: they never import an operator), then the operators
and triggers, then this module. Everything heavy is imported inside the operators' methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import conf

from leapi_provider.catalog.settings import LEAPI_POOL
from leapi_provider.operators.catalog import (
    DEFAULT_BATCH_POLL_INTERVAL_S,
    DEFAULT_BATCH_TIMEOUT_S,
    LeapiCatalogBatchOperator,
    LeapiCatalogFinalizeOperator,
    LeapiCatalogPlanOperator,
)


def add_catalog_tasks(
    *,
    leapi_conn_id: str = "leapi_default",
    aws_conn_id: str | None = "aws_default",
    export_feed: bool = False,
    outlets: Sequence[Any] = (),
    wait_timeout: float = DEFAULT_BATCH_TIMEOUT_S,
    poll_interval: float = DEFAULT_BATCH_POLL_INTERVAL_S,
    deferrable: bool | None = None,
    webhook_conn_id: str | None = None,
) -> dict[str, Any]:
    """Add the catalog tasks to the DAG being defined; returns them by name (``plan``, ``batch``, ``finalize``).

    ``plan`` -> ``batch`` (mapped, one :class:`LeapiCatalogBatchOperator` per batch file, pool ``leapi``:
    submit, then transfer as pipelines finish, deferred between) -> ``finalize`` (runs whatever the
    batches did).

    :param leapi_conn_id: the LEAPI connection. Fixed here, by the DAG author: no run's conf can change
        it (a run whose params name a connection fails).
    :param aws_conn_id: the connection of ``s3://`` locations (manifest, results, images, sources).
    :param export_feed: write the feed export (the ``export`` param) in ``finalize``.
    :param outlets: assets ``finalize`` updates (the result table).
    :param wait_timeout: how long a batch waits for its pipelines, in seconds from its first submit.
    :param poll_interval: the longest gap between polls of a batch's pipelines, in seconds.
    :param deferrable: wait in the triggerer (after the run's ``defer_after`` seconds in the worker);
        ``None``: ``[operators] default_deferrable``.
    :param webhook_conn_id: opt-in webhook-driven waits (deferrable batches only): the ``leapi_webhooks``
        connection of the receiver on the api-server. Each pipeline then carries a ``notify_url``, and a
        batch defers right after submitting and resumes on LEAPI's webhooks; polling remains a fallback
        at a gap of 60 s or more. Fixed here, like the other connections. docs/catalog.md, "Webhooks".
    """
    if deferrable is None:
        deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
    # (classic operators, not @task callables: each declares its OpenLineage datasets)
    plan = LeapiCatalogPlanOperator(task_id="plan", leapi_conn_id=leapi_conn_id, aws_conn_id=aws_conn_id)
    batches = LeapiCatalogBatchOperator.partial(
        task_id="batch",
        pool=LEAPI_POOL,
        deferrable=deferrable,
        poll_interval=poll_interval,
        timeout=wait_timeout,
        leapi_conn_id=leapi_conn_id,
        aws_conn_id=aws_conn_id,
        webhook_conn_id=webhook_conn_id,
    ).expand(batch_uri=plan.output)
    finalize = LeapiCatalogFinalizeOperator(
        task_id="finalize",
        trigger_rule="all_done",
        outlets=list(outlets),
        export_feed=export_feed,
        leapi_conn_id=leapi_conn_id,
        aws_conn_id=aws_conn_id,
    )
    batches >> finalize
    return {"plan": plan, "batch": batches, "finalize": finalize}
