"""Submit one image to LEAPI and wait for it in the triggerer (deferrable), then print the summary.

Connection ``leapi_default``: host = API base URL, password = API key (see docs/provider.md).
Run against another image: trigger with ``{"source_url": "https://..."}``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from leapi.models import MarketplacePreset
from leapi_provider.operators.leapi import LeapiSubmitPipelineOperator

#: The sample image (the docs' burger); ``LEAPI_EXAMPLE_SOURCE_URL`` points it elsewhere (``make airflow``
#: serves one on loopback).
SOURCE_URL = os.environ.get(
    "LEAPI_EXAMPLE_SOURCE_URL", "https://letsenhance.io/docs/assets/samples/burger.jpg"
)

with DAG(
    dag_id="example_leapi_submit",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "leapi"],
    doc_md=__doc__,
    params={
        "source_url": Param(SOURCE_URL, type="string"),
    },
) as dag:
    enhance = LeapiSubmitPipelineOperator(
        task_id="enhance",
        source_urls="{{ params.source_url }}",
        operations=[
            MarketplacePreset(
                width=1800,
                height=1200,
                restoration_level=4,
                lightai_intensity=1.0,
                toneai_intensity=0.5,
                image_format="JPEG",
                quality=75,
            )
        ],
        deferrable=True,
        poll_interval=10,
        timeout=60 * 60,
        retries=2,
        retry_delay=timedelta(seconds=30),
    )

    @task
    def report(summary: dict) -> str:
        line = f"pipeline {summary['pipeline_id']}: {summary['status']}, {summary['succeeded']}/{summary['images']} images"
        print(line)
        return line

    report(enhance.output)
