"""A batch task SIGKILLed in the middle of a partial-completion transfer, then resumed (issue 19).

The fan-out DAG runs in a child process (``dag.test()``); its batch defers at once (``defer_after=0``)
and transfers as its pipelines finish, one round per resume. In its second transfer round the child is
killed with SIGKILL while it copies (a patched copy in the child signals the moment and blocks). The
same logical run is then run again here: nothing is submitted or paid twice, the pipelines whose rows
were recorded before the kill are not transferred again, and the table has one row per image.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from devkit.airflow_dags import task_states
from devkit.server import running_server
from tests.fixtures.airflow import REPO, leapi_connection
from tests.fixtures.catalog import run_dag
from tests.integration.dags.test_catalog_waits import one_operation_manifest

pytestmark = pytest.mark.slow
FANOUT = ("example_dags/example_leapi_manifest_fanout.py", "example_leapi_manifest_fanout")
IMAGES = 60
URLS_PER_PIPELINE = 5
DAY = datetime(2026, 8, 1, tzinfo=UTC)

CHILD = """
import json, sys, threading, time
from datetime import datetime

import leapi_provider.catalog.collect as collect
import leapi_provider.catalog.transfer as transfer
from tests.fixtures.catalog import run_dag

marker, conf, day = sys.argv[1], json.loads(sys.argv[2]), datetime.fromisoformat(sys.argv[3])
rounds = {"n": 0}
copy = transfer._copy


def copy_then_block_in_round_two(*args, **kwargs):
    row = copy(*args, **kwargs)
    if rounds["n"] >= 2:
        open(marker, "w").write("mid-transfer")
        threading.Event().wait()  # SIGKILL comes here
    return row


def counting(batch, hook, pipelines, results):
    rounds["n"] += bool(pipelines)
    return transfer_pipelines(batch, hook, pipelines, results)


transfer_pipelines = transfer.transfer_pipelines
transfer._copy = copy_then_block_in_round_two
collect.transfer_pipelines = counting
run_dag("example_dags/example_leapi_manifest_fanout.py", "example_leapi_manifest_fanout", conf, logical_date=day)
print("the run ended before its second transfer round")
"""


def test_a_kill_mid_transfer_of_a_resume_pays_and_transfers_nothing_twice(
    catalog_env, catalog_site, catalog_bucket, tmp_path: Path
) -> None:
    images = catalog_site.add_images(IMAGES, prefix="killed", long_sides=(96,))
    conf = {
        "manifest": catalog_bucket.put_manifest(one_operation_manifest(images, catalog_site.base_url)),
        "results": catalog_bucket.uri("results"),
        "images": catalog_bucket.uri("images"),
        "urls_per_pipeline": URLS_PER_PIPELINE,
        "min_images_per_batch": IMAGES,
        "defer_after": 0,
        "transfer_concurrency": 1,
        "contact_sheet_images": 0,
    }
    marker = tmp_path / "mid-transfer"
    # (pipelines finish spread over 10 s: a batch transfers in several rounds)
    shuffle = ("--workers", "1", "--rate-limit-per-minute", "0", "--test-finish-shuffle", "10")
    with running_server(extra_args=shuffle) as server, leapi_connection(server.base_url, server.api_key):
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD), str(marker), json.dumps(conf), DAY.isoformat()],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not marker.exists():
            os.killpg(child.pid, signal.SIGKILL)
            pytest.fail(f"no second transfer round to kill:\n{child.communicate()[0][-3000:]}")
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        killed_at = datetime.now(UTC)
        recorded = _recorded_pipelines(catalog_bucket)
        written_before = _objects(catalog_bucket)
        assert recorded and len(written_before) > 0, "the kill came after a first round was recorded"
        downloads_before = server.logs().count('"GET /v1/tmp/')
        time.sleep(2)  # (S3's LastModified has one-second resolution)

        dag_run = run_dag(*FANOUT, conf, logical_date=DAY)

        assert dag_run.state == "success", task_states(dag_run)
        results = catalog_bucket.results().to_pylist()
        assert len(results) == IMAGES and len({r["manifest_row"] for r in results}) == IMAGES
        assert {r["status"] for r in results} == {"done"}
        assert server.used_credits() == IMAGES, "no image paid twice"
        assert server.logs().count('"POST /v1/pipeline HTTP') == IMAGES // URLS_PER_PIPELINE
        recorded_keys = {
            _key(catalog_bucket, r["output_uri"]) for r in results if r["pipeline_id"] in recorded
        }
        rewritten = [k for k in recorded_keys if _objects(catalog_bucket)[k] > killed_at]
        assert rewritten == [], "the pipelines recorded before the kill were not transferred again"
        downloads_after = server.logs().count('"GET /v1/tmp/') - downloads_before
        assert downloads_after == IMAGES - len(recorded_keys), "only the unrecorded images were downloaded"
    print(
        f"\nkilled with {len(recorded)} pipeline(s) recorded; the resume downloaded {downloads_after} image(s)"
    )


def _recorded_pipelines(bucket) -> set[int]:
    keys = [k for k in bucket.keys("results/_runs/") if re.search(r"/results/batch-\d+\.parquet$", k)]
    recorded: set[int] = set()
    for key in keys:
        table = pq.read_table(io.BytesIO(bucket.get(key)["Body"].read()))
        recorded |= {pid for pid in table["pipeline_id"].to_pylist() if pid is not None}
    return recorded


def _objects(bucket) -> dict[str, datetime]:
    listed = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix="images/").get("Contents", [])
    return {item["Key"]: item["LastModified"] for item in listed}


def _key(bucket, uri: str) -> str:
    return uri.removeprefix(f"s3://{bucket.name}/")
