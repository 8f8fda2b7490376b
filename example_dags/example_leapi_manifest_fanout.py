"""Fan a Parquet manifest of image URLs out to LEAPI and land the results in S3 with a result table.

``manifest -> validate -> group by preset and operation -> pipelines of up to N URLs, packed into batches
-> one task per batch (mapped, pool "leapi"): submit, wait (deferred, one trigger per batch), transfer to S3
-> result table``

* ``plan``: reads and validates the manifest (bad rows become ``rejected_row`` results with their reason),
  checks the account's credits, and cuts the valid rows into batches so that the number of mapped tasks
  stays within ``[core] max_map_length`` whatever the manifest's size. XCom carries the batch files' URIs.
* ``batch`` (mapped, one ``LeapiCatalogBatchOperator`` per batch): submit, wait (in the worker for
  ``defer_after`` seconds, then deferred to the triggerer), transfer.
* ``finalize``: the result table (one row per manifest row), partitioned ``run_date=/preset=``, written
  atomically, with a before/after contact sheet beside it; an ``Asset`` event for downstream DAGs.

Connections: ``leapi_default`` (host = API base URL, password = API key) and ``aws_default``.
Create the pool once: ``airflow pools set leapi 4 "LEAPI submissions"``. See ``docs/catalog.md``.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, Asset

from leapi_provider.catalog import add_catalog_tasks, catalog_params

RESULTS = os.environ.get("LEAPI_EXAMPLE_RESULTS", "s3://my-catalog/leapi/example/results")

with DAG(
    dag_id="example_leapi_manifest_fanout",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "leapi", "catalog"],
    doc_md=__doc__,
    max_active_runs=1,
    params=catalog_params(
        manifest=os.environ.get("LEAPI_EXAMPLE_MANIFEST", "s3://my-catalog/manifests/example.parquet"),
        results=RESULTS,
        images=os.environ.get("LEAPI_EXAMPLE_IMAGES", "s3://my-catalog/leapi/example/images"),
        urls_per_pipeline=10,
    ),
) as dag:
    add_catalog_tasks(
        leapi_conn_id="leapi_default",
        aws_conn_id="aws_default",
        deferrable=True,
        outlets=[Asset(name="leapi_example_results")],  # named: results is a param
    )
