"""Unusable manifests through a whole catalog DAG run (issue 6): the run fails at planning with a message
naming the manifest and the problem, nothing is submitted (no credit), and no result table is written.
Row-level rejects (nulls, wrong types, duplicate ids, unknown presets) are in ``tests/test_manifests.py``
and, end to end, in ``tests/example_dags/test_example_leapi_manifest_fanout.py``; here: a manifest whose
every row is bad, an empty one, and one that is not Parquet."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devkit.airflow_dags import task_states
from leapi_provider.manifests import MANIFEST_SCHEMA
from tests.fixtures.catalog import pipeline_count, run_dag

pytestmark = pytest.mark.slow
FANOUT = ("example_dags/example_leapi_manifest_fanout.py", "example_leapi_manifest_fanout")


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def only_bad_rows() -> pa.Table:
    rows = [
        {"image_id": None, "source_url": "https://cdn.example.com/a.jpg", "preset": "marketplace"},
        {"image_id": "b", "source_url": None, "preset": "marketplace"},
        {"image_id": "c", "source_url": "ftp://cdn.example.com/c.jpg", "preset": "marketplace"},
        {"image_id": "d", "source_url": "https://cdn.example.com/d.jpg", "preset": "instagram"},
        {"image_id": "e", "source_url": "https://cdn.example.com/e.jpg", "preset": "print", "width": 99_999},
    ]
    nullable = pa.schema([field.with_nullable(True) for field in MANIFEST_SCHEMA])
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in MANIFEST_SCHEMA.names} for row in rows], schema=nullable
    )


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("not-parquet", b"image_id,source_url,preset\nx,https://cdn.example.com/x.jpg,marketplace\n", "is not a readable Parquet file"),
        ("empty", parquet_bytes(MANIFEST_SCHEMA.empty_table()), "the manifest has no rows"),
        (
            "all-rows-bad",
            parquet_bytes(only_bad_rows()),
            ("none of the 5 manifest rows is valid (1 x missing_image_id, 1 x missing_source_url, "
            "1 x invalid_source_url, 1 x unknown_preset, 1 x invalid_option)"),
        ),
    ],
)  # fmt: skip
def test_an_unusable_manifest_fails_the_run_before_spending_anything(
    catalog_env, catalog_bucket, leapi_server, caplog, capfd, name: str, content: bytes, problem: str
) -> None:
    key = f"manifests/{name}.parquet"
    catalog_bucket.client.put_object(Bucket=catalog_bucket.name, Key=key, Body=content)
    conf = {
        "manifest": catalog_bucket.uri(key),
        "results": catalog_bucket.uri("results"),
        "images": catalog_bucket.uri("images"),
    }
    used = pipeline_count(leapi_server)

    dag_run = run_dag(*FANOUT, conf)

    captured = capfd.readouterr()
    logs = caplog.text + captured.out + captured.err
    assert dag_run.state == "failed", task_states(dag_run)
    assert problem in logs and key in logs, f"the failure names {key} and why"
    assert pipeline_count(leapi_server) == used, "nothing was submitted"
    assert catalog_bucket.keys() == [key], "no result table, no plan, no image for a run that could not start"
