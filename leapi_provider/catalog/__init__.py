"""The catalog job: a Parquet manifest in, enhanced images in object storage, a result table out.

The DAGs in ``example_dags/example_leapi_manifest_fanout.py``, ``dags/catalog_reenhancement.py`` and
``dags/marketplace_feed_etl.py`` are wired by :func:`add_catalog_tasks`::

    plan ─► batch (mapped; pool "leapi": submit ─► transfer as pipelines finish, deferred between) ─► finalize

One module per job: :mod:`~.settings` (every setting and the params made from them), :mod:`~.storage`
(locations, the run's folder), :mod:`~.fingerprints` (change detection), :mod:`~.plan`, :mod:`~.sizing`
(batch sizing, the cost model), :mod:`~.batch` (one batch's handle), :mod:`~.submit`, :mod:`~.collect`
(the wait), :mod:`~.transfer`, :mod:`~.finalize`, :mod:`~.report` (contact sheet, feed export); the
operators are in :mod:`leapi_provider.operators.catalog` and :mod:`~.tasks` wires them into a DAG (the
top layer: no data module imports an operator).

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
