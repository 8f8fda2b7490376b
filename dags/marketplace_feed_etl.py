"""Marketplace feed ETL: a feed manifest in, enhanced images in S3 under a feed-friendly key layout, the
result table out, and an export of the final image URL per ``image_id`` for the marketplace.

Key layout (param ``key_template``): ``feed/{preset}/{image_id}/{sha256:.16}.{ext}``: one folder per
product image, and a new key whenever the enhanced bytes change, so marketplaces and CDNs never serve a
stale image from cache. The export (``export`` param) is written per run
(``run_date=YYYY-MM-DD/feed-<run>.csv|.parquet``) and as ``latest/feed.csv|.parquet`` for the marketplace
to pull: ``image_id, image_url, preset, width, height, format, bytes, sha256, status, enhanced_at,
attributes``. ``image_url`` comes from ``feed_url_template`` (e.g. ``https://cdn.example.com/{key}``).

Incremental like ``catalog_reenhancement``: unchanged images keep their URL and cost nothing.
Connections: ``leapi_default``, ``aws_default``; pool ``leapi``. See ``docs/catalog.md``.

Event-driven (opt-in): with ``LEAPI_FEED_SQS_QUEUE`` set to the URL of an SQS queue the manifest bucket
notifies, the DAG ``marketplace_feed_arrivals`` starts one run of this DAG per manifest written, with the
manifest's ``s3://`` URI as its ``manifest`` (docs/provider.md, "Event-driven feed runs").
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset

from leapi_provider.catalog import FEED_KEY_TEMPLATE, add_catalog_tasks, catalog_params

SQS_QUEUE = os.environ.get("LEAPI_FEED_SQS_QUEUE")
RESULTS = os.environ.get("LEAPI_FEED_RESULTS", "s3://my-marketplace/leapi/feed/results")
# Named, not addressed by the results URI: ``results`` is a param a run may override, so each event's
# extra says where that run's table went (and an s3:// URI would import boto3 at every parse).
FEED_RESULTS = Asset(name="leapi_marketplace_feed_results")

with DAG(
    dag_id="marketplace_feed_etl",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["leapi", "catalog", "feed"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params=catalog_params(
        manifest=os.environ.get("LEAPI_FEED_MANIFEST", "s3://my-marketplace/feeds/incoming/"),
        results=RESULTS,
        images=os.environ.get("LEAPI_FEED_IMAGES", "s3://my-marketplace-cdn/images"),
        export=os.environ.get("LEAPI_FEED_EXPORT", "s3://my-marketplace/leapi/feed/export"),
        key_template=FEED_KEY_TEMPLATE,
        incremental=True,
        preset_defaults={
            "marketplace": {"width": 1200, "height": 1600, "image_format": "JPEG", "quality": 85}
        },
    ),
) as dag:
    add_catalog_tasks(export_feed=True, outlets=[FEED_RESULTS])

if SQS_QUEUE:
    from leapi_provider.events import feed_manifest_dispatcher

    arrivals_dag = feed_manifest_dispatcher(
        dag_id="marketplace_feed_arrivals", target_dag_id=dag.dag_id, queue_url=SQS_QUEUE
    )
