"""End-to-end runs of the catalog DAGs under a real Airflow: ``make e2e`` (:mod:`tests.e2e.__main__`) and
``make airflow`` (``scripts/airflow_local.py``), both on :class:`devkit.airflow_stack.AirflowStack`.

The sample catalog both upload (real photographs, one bad row, one dead link) is
:func:`devkit.catalog.sample_catalog`. The helpers here are the e2e run's side: its bucket and manifest,
the ``marketplace_feed_etl`` conf, and the connections, given to every Airflow component as
``AIRFLOW_CONN_*`` variables.
"""

from __future__ import annotations

from typing import Any

API_KEY = "e2e-key"
BUCKET = "leapi-e2e"
MANIFEST_KEY = "manifests/feed.parquet"
REGION = "us-east-1"


def connection_env(*, leapi_url: str, api_key: str, s3_endpoint: str) -> dict[str, str]:
    """``leapi_default`` and ``aws_default`` as ``AIRFLOW_CONN_*`` variables, and the test credentials that
    boto3 and s3fs read from the environment (so that no real AWS credentials can be used)."""
    from devkit.airflow_dags import leapi_connection_json
    from devkit.s3 import aws_connection_json

    return {
        "AIRFLOW_CONN_LEAPI_DEFAULT": leapi_connection_json(leapi_url, api_key),
        "AIRFLOW_CONN_AWS_DEFAULT": aws_connection_json(s3_endpoint),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }


def catalog_conf(*, bucket: str = BUCKET, **overrides: Any) -> dict[str, Any]:
    """The ``marketplace_feed_etl`` conf of the sample catalog: everything in ``bucket``."""
    return {
        "manifest": f"s3://{bucket}/{MANIFEST_KEY}",
        "results": f"s3://{bucket}/results",
        "images": f"s3://{bucket}/cdn",
        "export": f"s3://{bucket}/export",
        "feed_url_template": "https://cdn.example.com/{key}",
        "urls_per_pipeline": 4,
        "contact_sheet_images": 6,
        **overrides,
    }
