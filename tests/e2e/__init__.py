"""End-to-end runs of the catalog DAGs under a real Airflow: ``make e2e`` (:mod:`tests.e2e.__main__`) and
``make airflow`` (``scripts/airflow_local.py``), both on :class:`tests.e2e.stack.AirflowStack`.

The helpers here are the catalog side both share: the sample manifest (real photographs from
:mod:`tests.support.catalog`, one bad row, one dead link), its upload to S3 and the connections, given to
every Airflow component as ``AIRFLOW_CONN_*`` variables.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

API_KEY = "e2e-key"
BUCKET = "leapi-e2e"
MANIFEST_KEY = "manifests/feed.parquet"
REGION = "us-east-1"


def sample_catalog(folder: Path, base_url: str, count: int) -> Any:
    """``count`` photographs written into ``folder`` (served at ``base_url``) and their manifest, plus a row
    with an unknown preset (``rejected_row``) and a row whose source does not exist (``error``).

    :returns: the manifest as a ``pyarrow.Table``.
    """
    import pyarrow as pa

    from tests.support.catalog import sample_manifest, write_sample_images

    images = write_sample_images(folder, count, long_sides=(320, 240), qualities=(90, 60, 30), prefix="sku")
    table = sample_manifest(images, base_url)
    rows = table.to_pylist()
    rows.append({**rows[0], "image_id": "sku-bad-preset", "preset": "instagram"})
    rows.append({**rows[1], "image_id": "sku-dead-link", "source_url": f"{base_url}/discontinued.jpg"})
    return pa.Table.from_pylist(rows, schema=table.schema)


def put_manifest(s3: Any, table: Any, *, bucket: str = BUCKET, key: str = MANIFEST_KEY) -> str:
    """Write ``table`` as Parquet to ``s3://bucket/key`` (creating the bucket); returns the URI."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    existing = {entry["Name"] for entry in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return f"s3://{bucket}/{key}"


def connection_env(*, leapi_url: str, api_key: str, s3_endpoint: str) -> dict[str, str]:
    """``leapi_default`` and ``aws_default`` as ``AIRFLOW_CONN_*`` variables, and the test credentials that
    boto3 and s3fs read from the environment (so that no real AWS credentials can be used)."""
    from tests.fixtures.airflow import leapi_connection_json
    from tests.fixtures.s3 import aws_connection_json

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
