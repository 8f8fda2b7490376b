"""``catalog_reenhancement`` from the installed provider (:func:`leapi_provider.catalog.dags.catalog_reenhancement_dag`):
re-enhance a product catalog every day, paying only for images whose source or operation changed.

The default locations come from ``LEAPI_CATALOG_*`` (``make airflow`` points them at its local bucket); a
run's conf overrides them. See ``docs/catalog.md``.
"""

from __future__ import annotations

import os

from leapi_provider.catalog.dags import CATALOG_RESULTS, catalog_reenhancement_dag

__all__ = ["CATALOG_RESULTS", "dag"]

dag = catalog_reenhancement_dag(
    dag_id="catalog_reenhancement",
    manifest=os.environ.get("LEAPI_CATALOG_MANIFEST", "s3://my-catalog/manifests/catalog/"),
    results=os.environ.get("LEAPI_CATALOG_RESULTS", "s3://my-catalog/leapi/catalog/results"),
    images=os.environ.get("LEAPI_CATALOG_IMAGES", "s3://my-catalog/leapi/catalog/images"),
)
