"""Enhance images and land the results in S3 (Amazon provider's S3Hook), declared as an Asset.

Objects are written to ``s3://{bucket}/leapi/{preset}/{file_name}`` with their content type, object tags
and metadata (pipeline id, sha256). Downstream DAGs can be scheduled on the ``leapi_enhanced_images`` asset;
its events list the written URIs.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, Param

from leapi.models import MarketplacePreset
from leapi_provider.operators.leapi import LeapiSubmitPipelineOperator
from leapi_provider.transfers.leapi_to_s3 import LeapiResultToS3Operator

#: The sample image (the docs' burger); ``LEAPI_EXAMPLE_SOURCE_URL`` points it elsewhere (``make airflow``
#: serves one on loopback).
SOURCE_URL = os.environ.get(
    "LEAPI_EXAMPLE_SOURCE_URL", "https://letsenhance.io/docs/assets/samples/burger.jpg"
)

# Named, not addressed by an s3:// URI: the bucket is a param, so the events carry where objects went (and
# an s3:// URI would import boto3 at every parse, through the Amazon provider's URI check).
ENHANCED_IMAGES = Asset(name="leapi_enhanced_images")

with DAG(
    dag_id="example_leapi_to_s3",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "leapi"],
    doc_md=__doc__,
    params={
        "source_urls": Param([SOURCE_URL], type="array", items={"type": "string"}),
        "bucket": Param(os.environ.get("LEAPI_EXAMPLE_BUCKET", "leapi-results"), type="string"),
    },
    render_template_as_native_obj=True,
) as dag:
    enhance = LeapiSubmitPipelineOperator(
        task_id="enhance",
        source_urls="{{ params.source_urls }}",
        operations=[
            MarketplacePreset(width=1200, height=1600, restoration_level=2, image_format="JPEG", quality=85)
        ],
        deferrable=True,
        poll_interval=10,
        retries=2,
        retry_delay=timedelta(seconds=30),
    )

    to_s3 = LeapiResultToS3Operator(
        task_id="to_s3",
        pipeline_id=enhance.output["pipeline_id"],
        s3_bucket="{{ params.bucket }}",
        s3_key_template="leapi/{preset}/{file_name}",
        tags={"source": "leapi", "dag_run": "{{ run_id }}"},
        aws_conn_id="aws_default",
        outlets=[ENHANCED_IMAGES],
        retries=3,
        retry_delay=timedelta(seconds=30),
    )
