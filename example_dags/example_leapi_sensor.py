"""Submit without waiting, do other work, then wait for the pipeline with a (deferrable) sensor.

The submit task returns at once with the pipeline id (XCom ``pipeline_id``); the sensor waits for it in the
triggerer. One sensor can wait for many ids: pass a list (e.g. the ids of a mapped submit).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from leapi_provider.operators.leapi import LeapiSubmitPipelineOperator
from leapi_provider.sensors.leapi import LeapiPipelineSensor

#: The sample image (the docs' burger); ``LEAPI_EXAMPLE_SOURCE_URL`` points it elsewhere (``make airflow``
#: serves one on loopback).
SOURCE_URL = os.environ.get(
    "LEAPI_EXAMPLE_SOURCE_URL", "https://letsenhance.io/docs/assets/samples/burger.jpg"
)

with DAG(
    dag_id="example_leapi_sensor",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "leapi"],
    doc_md=__doc__,
    params={"source_url": Param(SOURCE_URL, type="string")},
) as dag:
    submit = LeapiSubmitPipelineOperator(
        task_id="submit",
        source_urls="{{ params.source_url }}",
        operations=[{"op": "preset/realestate", "width": 1600, "height": 900, "restoration_level": 4}],
        wait_for_completion=False,
        retries=2,
        retry_delay=timedelta(seconds=30),
    )

    wait = LeapiPipelineSensor(
        task_id="wait",
        pipeline_ids=submit.output["pipeline_id"],
        deferrable=True,
        poke_interval=15,
        timeout=60 * 60,
    )
