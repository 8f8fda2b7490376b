"""Re-enhance a product catalog every day, incrementally: only images whose source or operation changed.

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

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset

from leapi_provider.catalog import add_catalog_tasks, catalog_params

RESULTS = os.environ.get("LEAPI_CATALOG_RESULTS", "s3://my-catalog/leapi/catalog/results")
# Named, not addressed by the results URI: ``results`` is a param a run may override, so each event's
# extra says where that run's table went (and an s3:// URI would import boto3 at every parse).
CATALOG_RESULTS = Asset(name="leapi_catalog_results")

with DAG(
    dag_id="catalog_reenhancement",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["leapi", "catalog"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params=catalog_params(
        manifest=os.environ.get("LEAPI_CATALOG_MANIFEST", "s3://my-catalog/manifests/catalog/"),
        results=RESULTS,
        images=os.environ.get("LEAPI_CATALOG_IMAGES", "s3://my-catalog/leapi/catalog/images"),
        incremental=True,
        preset_defaults={
            "marketplace": {"width": 1600, "height": 1600, "image_format": "JPEG", "quality": 85}
        },
    ),
) as dag:
    # Connections are the DAG author's choice, never a run's; a catalog's waits are long: defer them.
    add_catalog_tasks(
        leapi_conn_id="leapi_default", aws_conn_id="aws_default", deferrable=True, outlets=[CATALOG_RESULTS]
    )
