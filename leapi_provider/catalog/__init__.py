"""The catalog job: a Parquet manifest in, enhanced images in object storage, a result table out.

The DAGs in ``example_dags/example_leapi_manifest_fanout.py``, ``dags/catalog_reenhancement.py`` and
``dags/marketplace_feed_etl.py`` are wired by :func:`add_catalog_tasks`::

    plan ─► batch (mapped; pool "leapi": submit ─► wait, deferred ─► transfer) ─► finalize

One module per job: :mod:`~.settings` (params), :mod:`~.storage` (locations, the run's folder),
:mod:`~.fingerprints` (change detection), :mod:`~.plan`, :mod:`~.submit`, :mod:`~.transfer`,
:mod:`~.finalize`, :mod:`~.report` (contact sheet, feed export) and :mod:`~.tasks` (the Airflow tasks);
the batch task is :class:`leapi_provider.operators.catalog.LeapiCatalogBatchOperator`.

DAG files import this package when they are parsed, so it exports only what they need and imports nothing
heavy (no pyarrow, numpy, pandas or Pillow): the data modules are imported by the tasks that use them.
"""

from __future__ import annotations

from leapi_provider.catalog.settings import (
    DEFAULT_KEY_TEMPLATE,
    FEED_KEY_TEMPLATE,
    LEAPI_POOL,
    catalog_params,
)
from leapi_provider.catalog.tasks import add_catalog_tasks

__all__ = ["DEFAULT_KEY_TEMPLATE", "FEED_KEY_TEMPLATE", "LEAPI_POOL", "add_catalog_tasks", "catalog_params"]
