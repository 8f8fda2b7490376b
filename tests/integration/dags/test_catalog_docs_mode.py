"""A 100-image catalog run against a LEAPI that does only what its docs promise, under a hard rate limit.

``leapi-server --compat docs`` with 10 submits per minute: no ``Retry-After``, every REJECTED as HTTP 200,
no Idempotency-Key, no ``results[].error``, a usage body the client cannot read. 100 images at 5 URLs per
pipeline are 20 submits, so the limit bites once: the run must still finish with no failed task, every
image charged exactly once, and each batch logging how long it waited on the limit. The batch refused
for the limit does not sleep in its worker for the next slot (about a minute away, past its
``defer_after`` of 5 s): it defers to a ``DateTimeTrigger`` at that slot and resumes submitting then.

(The docs-only usage body is unreadable on purpose: ``docs_only_params`` turns the catalog's quota guard
off where the catalog has one.)
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa
import pytest

from devkit.airflow_dags import task_states
from devkit.catalog import SampleImage, sample_manifest
from devkit.server import RunningServer, docs_only_rate_limited_server
from leapi_provider.manifests import MANIFEST_SCHEMA
from tests.fixtures.airflow import leapi_connection
from tests.fixtures.catalog import docs_only_params, run_dag

pytestmark = pytest.mark.slow
FANOUT = ("example_dags/example_leapi_manifest_fanout.py", "example_leapi_manifest_fanout")
IMAGES = 100
URLS_PER_PIPELINE = 5
LIMIT_PER_MINUTE = 10


def one_operation_manifest(images: list[SampleImage], base_url: str) -> pa.Table:
    """Every row asks for the same operation: pipelines group images by operation, so 100 images at 5
    URLs per pipeline are exactly 20 submits."""
    rows = sample_manifest(images, base_url, presets=("marketplace",)).to_pylist()
    return pa.Table.from_pylist([row | {"width": 192, "height": 192} for row in rows], schema=MANIFEST_SCHEMA)


@pytest.fixture
def strict_server() -> Iterator[RunningServer]:
    with docs_only_rate_limited_server(per_minute=LIMIT_PER_MINUTE, workers=2) as server:
        yield server


def test_a_100_image_catalog_under_a_hard_limit_without_hints(
    catalog_env, catalog_site, catalog_bucket, strict_server, caplog, capfd
) -> None:
    images = catalog_site.add_images(IMAGES, prefix="strict", long_sides=(96, 80, 64))
    conf = {
        "manifest": catalog_bucket.put_manifest(one_operation_manifest(images, catalog_site.base_url)),
        "results": catalog_bucket.uri("results"),
        "images": catalog_bucket.uri("images"),
        "urls_per_pipeline": URLS_PER_PIPELINE,
        "min_images_per_batch": 25,
        "defer_after": 5,
        "contact_sheet_images": 0,
        **docs_only_params(strict_server),
    }
    used = strict_server.used_credits()
    log_start = len(strict_server.logs())
    started = time.monotonic()
    with (
        caplog.at_level(logging.INFO),
        leapi_connection(strict_server.base_url, strict_server.api_key),
    ):
        dag_run = run_dag(*FANOUT, conf)
    elapsed = time.monotonic() - started

    states = task_states(dag_run)
    assert dag_run.state == "success", states
    assert {state for state, _ in states.values()} == {"success"}, f"no failed (or retried) task: {states}"
    assert {tries for _, tries in states.values()} == {1}, f"no task needed a retry: {states}"
    results = catalog_bucket.results().to_pylist()
    assert len(results) == IMAGES and {r["status"] for r in results} == {"done"}
    assert strict_server.used_credits() - used == IMAGES, "every image charged exactly once"
    pipelines = {r["pipeline_id"] for r in results}
    assert len(pipelines) == IMAGES // URLS_PER_PIPELINE
    posts = strict_server.logs().count('"POST /v1/pipeline HTTP/1.1" 200')
    refused = posts - len(pipelines)
    per_batch = re.compile(
        r"Batch (\d+): \d+ submit\(s\); waited [\d.]+s on the LEAPI rate limit \(longest single wait ([\d.]+)s\)"
    )
    waits: dict[str, float] = {}  # (each wait's own length: several waits under the bound may add up past it)
    for record in caplog.records:
        if match := per_batch.search(record.getMessage()):
            waits[match.group(1)] = float(match.group(2))
    assert sorted(waits) == ["0", "1", "2", "3"], f"one line per batch task: {waits}"
    assert 1 <= refused <= 3, f"{refused} refused submits: the limit was hit, and not hammered"
    assert max(waits.values()) <= 5, f"no batch waited past its defer_after in a worker: {waits}"
    task_logs = caplog.text + capfd.readouterr().out  # (the operators log through the task's logger)
    deferred = re.findall(r"Deferring the rest of the submits (\d+)s", task_logs)
    # (the refused minute's slot is tens of seconds away; a paced slot just past defer_after defers too,
    # and is logged with what is left of it once the task has written its records)
    assert deferred and max(int(s) for s in deferred) >= 30, "the slot about a minute away: deferred"
    assert elapsed >= 50, "the run did wait for the limit's window (in the triggerer)"
    peak = _most_in_a_minute(strict_server.logs()[log_start:])
    assert peak <= LIMIT_PER_MINUTE + 2, f"the server saw {peak} submits in one minute"
    print(
        f"\n100 images, {IMAGES // URLS_PER_PIPELINE} submits at {LIMIT_PER_MINUTE}/min: {elapsed:.0f}s, "
        f"{refused} refused, in-worker waits per batch {waits}, {len(deferred)} deferral(s) to the next slot, "
        f"at most {peak} submits received in a minute"
    )


def _most_in_a_minute(log_text: str) -> int:
    """The most ``POST /v1/pipeline`` the server received within any 60 s (its access log's timestamps)."""
    stamps = [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        for line in log_text.splitlines()
        if '"POST /v1/pipeline HTTP' in line
    ]
    return max((sum(0 <= (t - s).total_seconds() < 60 for t in stamps) for s in stamps), default=0)
