"""Enhance one image and copy the result to storage (any ObjectStoragePath: file://, s3://, gs://, ...).

Each result is streamed, verified (complete, decodable, the size LEAPI reported) and written as
``{source basename}__{preset}__{pipeline id}.{ext}``. Trigger with ``{"destination": "s3://bucket/prefix/"}``
and a ``destination_conn_id`` to land it elsewhere.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from leapi.models import PrintPreset
from leapi_provider.operators.leapi import LeapiDownloadResultOperator, LeapiSubmitPipelineOperator

#: The sample image (the docs' burger); ``LEAPI_EXAMPLE_SOURCE_URL`` points it elsewhere (``make airflow``
#: serves one on loopback).
SOURCE_URL = os.environ.get(
    "LEAPI_EXAMPLE_SOURCE_URL", "https://letsenhance.io/docs/assets/samples/burger.jpg"
)

with DAG(
    dag_id="example_leapi_download",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "leapi"],
    doc_md=__doc__,
    params={
        "source_url": Param(SOURCE_URL, type="string"),
        "destination": Param("file:///tmp/leapi-results/", type="string"),
    },
) as dag:
    enhance = LeapiSubmitPipelineOperator(
        task_id="enhance",
        source_urls="{{ params.source_url }}",
        operations=[PrintPreset(width=1600, height=1065, restoration_level=2, dpi=300, image_format="PNG")],
        deferrable=True,
        poll_interval=10,
        retries=2,
        retry_delay=timedelta(seconds=30),
    )

    download = LeapiDownloadResultOperator(
        task_id="download",
        pipeline_id=enhance.output["pipeline_id"],
        destination="{{ params.destination }}",
        retries=2,
        retry_delay=timedelta(seconds=30),
    )
