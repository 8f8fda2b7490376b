"""``marketplace_feed_etl`` from the installed provider (:func:`leapi_provider.catalog.dags.marketplace_feed_etl_dag`):
a feed manifest in, enhanced images under a feed key layout, the result table and a feed export out.

The default locations come from ``LEAPI_FEED_*`` (``make airflow`` and ``make e2e`` point them at their
local bucket); a run's conf overrides them. See ``docs/catalog.md``.

Event-driven (opt-in): with ``LEAPI_FEED_SQS_QUEUE`` set to the URL of an SQS queue the manifest bucket
notifies, the DAG ``marketplace_feed_arrivals`` starts one run of this DAG per manifest written, with the
manifest's ``s3://`` URI as its ``manifest`` (docs/provider.md, "Event-driven feed runs").

Webhook-driven waits (opt-in): with ``LEAPI_FEED_WEBHOOKS_CONN_ID`` naming a ``leapi_webhooks`` connection
(read when the file is parsed, like the locations), each batch's pipelines carry a ``notify_url`` on the
receiver the provider mounts on the api-server, and the batches resume on LEAPI's webhooks instead of
polling (docs/catalog.md, "Webhooks").
"""

from __future__ import annotations

import os

from leapi_provider.catalog.dags import FEED_RESULTS, marketplace_feed_etl_dag

__all__ = ["FEED_RESULTS", "dag"]

dag = marketplace_feed_etl_dag(
    dag_id="marketplace_feed_etl",
    manifest=os.environ.get("LEAPI_FEED_MANIFEST", "s3://my-marketplace/feeds/incoming/"),
    results=os.environ.get("LEAPI_FEED_RESULTS", "s3://my-marketplace/leapi/feed/results"),
    images=os.environ.get("LEAPI_FEED_IMAGES", "s3://my-marketplace-cdn/images"),
    export=os.environ.get("LEAPI_FEED_EXPORT", "s3://my-marketplace/leapi/feed/export"),
    webhook_conn_id=os.environ.get("LEAPI_FEED_WEBHOOKS_CONN_ID") or None,
)

if SQS_QUEUE := os.environ.get("LEAPI_FEED_SQS_QUEUE"):
    from leapi_provider.events import feed_manifest_dispatcher

    arrivals_dag = feed_manifest_dispatcher(
        dag_id="marketplace_feed_arrivals", target_dag_id=dag.dag_id, queue_url=SQS_QUEUE
    )
