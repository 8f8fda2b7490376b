"""The catalog DAGs, built from the installed provider: a DAG folder needs a file of about ten lines, no
checkout of this repository.

::

    from leapi_provider.catalog.dags import marketplace_feed_etl_dag

    dag = marketplace_feed_etl_dag(
        manifest="s3://acme-feeds/incoming/",
        results="s3://acme-feeds/leapi/results",
        images="s3://acme-cdn/images",
        export="s3://acme-feeds/leapi/export",
    )

This repository's ``dags/marketplace_feed_etl.py`` and ``dags/catalog_reenhancement.py`` are such files.
The locations are the defaults of the DAG's params (a run's conf may override them); every other catalog
param keeps its built-in default unless given in ``params``. Imported when DAG files are parsed: nothing
here imports pyarrow, numpy or an HTTP client (the tasks import them when they run).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset

from leapi_provider.catalog.settings import FEED_KEY_TEMPLATE, catalog_params
from leapi_provider.catalog.tasks import add_catalog_tasks

__all__ = ["CATALOG_RESULTS", "FEED_RESULTS", "catalog_reenhancement_dag", "marketplace_feed_etl_dag"]

#: The result tables as assets, updated by each DAG's ``finalize``: schedule a downstream DAG with
#: ``schedule=[CATALOG_RESULTS]``. Named, not addressed by the results URI: ``results`` is a param a run
#: may override, so each event's extra says where that run's table went (and an ``s3://`` URI would
#: import boto3 at every parse).
CATALOG_RESULTS = Asset(name="leapi_catalog_results")
FEED_RESULTS = Asset(name="leapi_marketplace_feed_results")

_START_DATE = datetime(2026, 1, 1)
_DEFAULT_ARGS: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(minutes=2)}

_FEED_DOC = """Marketplace feed ETL: a feed manifest in, enhanced images in S3 under a feed-friendly key layout,
the result table out, and an export of the final image URL per ``image_id`` for the marketplace.

Key layout (param ``key_template``): ``feed/{preset}/{image_id}/{sha256:.16}.{ext}``: one folder per
product image, and a new key whenever the enhanced bytes change, so marketplaces and CDNs never serve a
stale image from cache. The export (``export`` param) is written per run
(``run_date=YYYY-MM-DD/feed-<run>.csv|.parquet``) and as ``latest/feed.csv|.parquet`` for the marketplace
to pull: ``image_id, image_url, preset, width, height, format, bytes, sha256, status, enhanced_at,
attributes``. ``image_url`` comes from ``feed_url_template`` (e.g. ``https://cdn.example.com/{key}``).

Incremental like ``catalog_reenhancement``: unchanged images keep their URL and cost nothing.
Connections: ``leapi_default``, ``aws_default``; pool ``leapi``. See ``docs/catalog.md``.
"""

_CATALOG_DOC = """Re-enhance a product catalog every day, incrementally: only images whose source or operation
changed.

Every image of the manifest gets a row in the day's result table: ``done`` (re-enhanced), ``error`` (with
the API's reason), ``rejected_row`` (a bad manifest row, with its reason), ``skipped_unchanged`` (same
source URL, same operation hash and same source fingerprint as its last ``done`` row: its previous output
is carried forward) or ``deferred_quota`` (not enough credits, with ``on_quota_shortfall =
"process_what_fits"``).

Source change detection: ``HEAD`` of each source; the ``ETag`` is the fingerprint, else
``Last-Modified`` + ``Content-Length``, else the sha256 of the content (``change_detection="content"``
always hashes the content). See ``docs/catalog.md``.

Locations are params (trigger with a conf to override them); the result table is an ``Asset`` that other
DAGs can be scheduled on. Connections: ``leapi_default``, ``aws_default``; pool ``leapi``.
"""


@dataclass(frozen=True, kw_only=True)
class _DagKind:
    """What sets one catalog DAG apart from the other, whatever its factory's arguments."""

    doc_md: str
    tags: tuple[str, ...]
    outlet: Asset
    export_feed: bool
    #: Param defaults of this kind (the factory's locations and ``params`` come over them).
    params: Mapping[str, Any] = field(default_factory=dict)


_FEED = _DagKind(
    doc_md=_FEED_DOC,
    tags=("leapi", "catalog", "feed"),
    outlet=FEED_RESULTS,
    export_feed=True,
    params={"key_template": FEED_KEY_TEMPLATE},
)
_CATALOG = _DagKind(doc_md=_CATALOG_DOC, tags=("leapi", "catalog"), outlet=CATALOG_RESULTS, export_feed=False)


def marketplace_feed_etl_dag(
    *,
    manifest: str,
    results: str,
    images: str,
    export: str,
    dag_id: str = "marketplace_feed_etl",
    schedule: Any = None,
    preset_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    leapi_conn_id: str = "leapi_default",
    aws_conn_id: str | None = "aws_default",
    deferrable: bool = True,
    webhook_conn_id: str | None = None,
    **dag_kwargs: Any,
) -> DAG:
    """The ``marketplace_feed_etl`` DAG: feed key layout, export of the final image URL per ``image_id``,
    incremental.

    :param manifest: the default manifest: Parquet file, folder or glob (any ``ObjectStoragePath`` URI).
    :param results: the default result table root.
    :param images: where enhanced images go by default.
    :param export: the default feed export folder.
    :param dag_id: the DAG's id.
    :param schedule: Airflow's ``schedule`` (default: triggered only).
    :param preset_defaults: per preset default options (default: marketplace 1200 x 1600 JPEG, quality 85).
    :param params: other catalog param defaults (``urls_per_pipeline``, ``feed_url_template``, ...).
    :param leapi_conn_id: the LEAPI connection (fixed by the DAG author: a run's conf cannot change it).
    :param aws_conn_id: the connection of ``s3://`` locations.
    :param deferrable: wait in the triggerer (a catalog's waits are long: on by default here).
    :param webhook_conn_id: wake the batches with LEAPI's webhooks through this ``leapi_webhooks``
        connection (see :func:`~leapi_provider.catalog.add_catalog_tasks`); ``None``: poll only.
    :param dag_kwargs: more ``DAG`` arguments (``tags``, ``default_args``, ``start_date``, ...).
    """
    return _catalog_dag(
        _FEED,
        fileloc=_caller_file(),
        dag_id=dag_id,
        schedule=schedule,
        params={
            "manifest": manifest,
            "results": results,
            "images": images,
            "export": export,
            **(params or {}),
        },
        preset_defaults=preset_defaults
        or {"marketplace": {"width": 1200, "height": 1600, "image_format": "JPEG", "quality": 85}},
        dag_kwargs=dag_kwargs,
        leapi_conn_id=leapi_conn_id,
        aws_conn_id=aws_conn_id,
        deferrable=deferrable,
        webhook_conn_id=webhook_conn_id,
    )


def catalog_reenhancement_dag(
    *,
    manifest: str,
    results: str,
    images: str,
    dag_id: str = "catalog_reenhancement",
    schedule: Any = "@daily",
    preset_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    leapi_conn_id: str = "leapi_default",
    aws_conn_id: str | None = "aws_default",
    deferrable: bool = True,
    webhook_conn_id: str | None = None,
    **dag_kwargs: Any,
) -> DAG:
    """The ``catalog_reenhancement`` DAG: daily, incremental (only changed images are paid for).

    :param manifest: the default manifest: Parquet file, folder or glob (any ``ObjectStoragePath`` URI).
    :param results: the default result table root.
    :param images: where enhanced images go by default.
    :param dag_id: the DAG's id.
    :param schedule: Airflow's ``schedule`` (default ``@daily``).
    :param preset_defaults: per preset default options (default: marketplace 1600 x 1600 JPEG, quality 85).
    :param params: other catalog param defaults (``urls_per_pipeline``, ``max_credits``, ...).
    :param leapi_conn_id: the LEAPI connection (fixed by the DAG author: a run's conf cannot change it).
    :param aws_conn_id: the connection of ``s3://`` locations.
    :param deferrable: wait in the triggerer (a catalog's waits are long: on by default here).
    :param webhook_conn_id: wake the batches with LEAPI's webhooks through this ``leapi_webhooks``
        connection (see :func:`~leapi_provider.catalog.add_catalog_tasks`); ``None``: poll only.
    :param dag_kwargs: more ``DAG`` arguments (``tags``, ``default_args``, ``start_date``, ...).
    """
    return _catalog_dag(
        _CATALOG,
        fileloc=_caller_file(),
        dag_id=dag_id,
        schedule=schedule,
        params={"manifest": manifest, "results": results, "images": images, **(params or {})},
        preset_defaults=preset_defaults
        or {"marketplace": {"width": 1600, "height": 1600, "image_format": "JPEG", "quality": 85}},
        dag_kwargs=dag_kwargs,
        leapi_conn_id=leapi_conn_id,
        aws_conn_id=aws_conn_id,
        deferrable=deferrable,
        webhook_conn_id=webhook_conn_id,
    )


def _catalog_dag(
    kind: _DagKind,
    *,
    fileloc: str,
    dag_id: str,
    schedule: Any,
    params: Mapping[str, Any],
    preset_defaults: Mapping[str, Mapping[str, Any]],
    dag_kwargs: Mapping[str, Any],
    **task_args: Any,
) -> DAG:
    """One catalog DAG of ``kind``: ``params`` (the locations, then the author's params) come over its param
    defaults, ``dag_kwargs`` over its ``DAG`` arguments; ``task_args`` go to :func:`add_catalog_tasks`."""
    settings = {
        "start_date": _START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "tags": list(kind.tags),
        "doc_md": kind.doc_md,
        "default_args": dict(_DEFAULT_ARGS),
        **dag_kwargs,
    }
    params = {**kind.params, "incremental": True, "preset_defaults": preset_defaults, **params}
    with DAG(dag_id=dag_id, schedule=schedule, params=catalog_params(**params), **settings) as dag:
        add_catalog_tasks(export_feed=kind.export_feed, outlets=[kind.outlet], **task_args)
    dag.fileloc = fileloc
    return dag


def _caller_file() -> str:
    """The file that called the public factory: the DAG's file, as Airflow's ``@dag`` records it (a
    ``DAG`` made here would otherwise name this module, and the DAG file is what tasks re-parse)."""
    return sys._getframe(2).f_code.co_filename
