"""A catalog batch's wait within a request budget, transferring as its pipelines finish (issue 19).

The fan-out DAG runs with ``dag.test()`` against a real ``leapi-server``, its batches deferring after two
seconds in the worker: the deferred wait reads one pipeline per round and resumes its task when about a
quarter of the batch finished; the task reads the finished pipelines in submission order (the same read
its transfer uses) and defers again for the rest. What the server received is counted from its access
log: status reads per pipeline, API requests per image.

* in order: the server's workers take pipelines in submission order;
* shuffled: ``--test-finish-shuffle`` holds each pipeline back a seeded random 0-8 s, so they finish out
  of order: the cost stays bounded and every image still ends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pytest

from devkit.airflow_dags import task_states, xcom_value
from devkit.catalog import SampleImage, sample_manifest
from devkit.server import RunningServer, running_server
from leapi_provider.manifests import MANIFEST_SCHEMA
from tests.fixtures.airflow import leapi_connection
from tests.fixtures.catalog import run_dag

pytestmark = pytest.mark.slow
FANOUT = ("example_dags/example_leapi_manifest_fanout.py", "example_leapi_manifest_fanout")
IMAGES = 120
URLS_PER_PIPELINE = 2
PIPELINES = IMAGES // URLS_PER_PIPELINE


def one_operation_manifest(images: list[SampleImage], base_url: str, *, box: int = 160) -> pa.Table:
    """One operation for every row: pipelines of exactly ``URLS_PER_PIPELINE`` images, in manifest order."""
    rows = sample_manifest(images, base_url, presets=("marketplace",)).to_pylist()
    return pa.Table.from_pylist([row | {"width": box, "height": box} for row in rows], schema=MANIFEST_SCHEMA)


@dataclass(frozen=True)
class Api:
    server: RunningServer
    shuffled: bool


@pytest.fixture(params=["in_order", "shuffled"])
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    shuffled = request.param == "shuffled"
    shuffle = ("--test-finish-shuffle", "8") if shuffled else ()
    with running_server(extra_args=("--workers", "1", "--rate-limit-per-minute", "0", *shuffle)) as server:
        yield Api(server, shuffled)


def status_reads(server: RunningServer, since: int) -> int:
    return len(re.findall(r'"GET /v1/pipeline/\d+ HTTP', server.logs()[since:]))


def test_a_batch_reads_each_pipeline_about_once_and_transfers_as_they_finish(
    catalog_env, catalog_site, catalog_bucket, api: Api, caplog
) -> None:
    server = api.server
    # (a few tenths of a second of engine time per image: a batch's pipelines finish over many seconds)
    images = catalog_site.add_images(IMAGES, prefix="waits", long_sides=(320,))
    conf = {
        "manifest": catalog_bucket.put_manifest(
            one_operation_manifest(images, catalog_site.base_url, box=640)
        ),
        "results": catalog_bucket.uri("results"),
        "images": catalog_bucket.uri("images"),
        "urls_per_pipeline": URLS_PER_PIPELINE,
        "min_images_per_batch": IMAGES,  # one batch of 60 pipelines: its fixed reads are spread thin
        "defer_after": 2,
        "contact_sheet_images": 0,
    }
    log_start = len(server.logs())
    with caplog.at_level(logging.INFO), leapi_connection(server.base_url, server.api_key):
        dag_run = run_dag(*FANOUT, conf)

    states = task_states(dag_run)
    assert dag_run.state == "success", states
    results = catalog_bucket.results().to_pylist()
    assert len(results) == IMAGES and {r["status"] for r in results} == {"done"}, "one done row per image"
    assert len({r["manifest_row"] for r in results}) == IMAGES
    assert server.used_credits() == IMAGES, "each image charged once"

    reads = status_reads(server, log_start)
    posts = server.logs()[log_start:].count('"POST /v1/pipeline HTTP')
    api_requests = reads + posts + server.logs()[log_start:].count('"GET /v1/me/usage')
    pipelines = sorted({r["pipeline_id"] for r in results})
    assert len(pipelines) == PIPELINES and posts == PIPELINES
    finished = sorted(pipelines, key=lambda pid: _finished_at(results, pid))
    if api.shuffled:
        assert finished != pipelines, "the shuffled server finished them out of submission order"
        assert reads <= PIPELINES * 2, (
            f"{reads} status reads for {PIPELINES} pipelines finishing out of order"
        )
    else:
        assert reads <= PIPELINES * 1.3, f"{reads} status reads for {PIPELINES} pipelines"
        # A submit and at most 1.3 reads per pipeline (at 10 URLs a pipeline: 0.23 requests per image).
        assert api_requests <= PIPELINES * (1 + 1.3) + 1, f"{api_requests} API requests"

    # Each batch transferred in several rounds, its first one before its last pipeline finished.
    rounds = [r.getMessage() for r in caplog.records if "finished and transferred" in r.getMessage()]
    for index in range(1):
        batch_pipelines = xcom_value(dag_run, "batch", key="pipeline_ids", map_index=index)
        assert sum(m.startswith(f"Batch {index}:") for m in rounds) >= 2, rounds
        rows = [r for r in results if r["pipeline_id"] in batch_pipelines]
        first_written = min(_written_at(catalog_bucket, r["output_uri"]) for r in rows)
        assert first_written < max(_finished_at(results, pid) for pid in batch_pipelines), index
    print(
        f"\n{'shuffled' if api.shuffled else 'in order'}: {reads} status reads for {PIPELINES} "
        f"pipelines ({reads / PIPELINES:.2f} each), {api_requests / IMAGES:.3f} API requests per image, "
        f"{len(rounds)} transfer rounds"
    )


def _finished_at(results: list[dict], pipeline_id: int) -> datetime:
    return max(r["finished_at"] for r in results if r["pipeline_id"] == pipeline_id)


def _written_at(bucket, uri: str) -> datetime:
    key = uri.removeprefix(f"s3://{bucket.name}/")
    return bucket.client.head_object(Bucket=bucket.name, Key=key)["LastModified"]
