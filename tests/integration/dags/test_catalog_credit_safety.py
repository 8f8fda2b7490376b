"""End to end: a run's credit cap (``max_credits``), dry runs (``dry_run``) and the quota guard
(``quota_guard``) at their edges, counted on ``leapi-server``'s own usage ledger."""

from __future__ import annotations

import http.server
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devkit.airflow_dags import task_states
from devkit.catalog import sample_manifest
from devkit.server import RunningServer
from devkit.sources import serve_http
from leapi_provider import manifests
from tests.fixtures.airflow import leapi_connection
from tests.fixtures.catalog import pipeline_count, run_dag

pytestmark = pytest.mark.slow
FANOUT = ("example_dags/example_leapi_manifest_fanout.py", "example_leapi_manifest_fanout")
_HOP_BY_HOP = {"connection", "content-length", "content-encoding", "transfer-encoding", "host"}


def _statuses(table: pa.Table) -> dict[str, str]:
    return {row["image_id"]: row["status"] for row in table.to_pylist()}


def _logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> str:
    captured = capfd.readouterr()
    return caplog.text + captured.out + captured.err


def test_max_credits_cap_reached_mid_batch(
    catalog_env, catalog_site, catalog_bucket, leapi_server, caplog, capfd
) -> None:
    """7 images, 3 per pipeline, a cap of 4: the second pipeline of the batch is cut to one image."""
    images = catalog_site.add_images(7, prefix="capped")
    # One operation for all (no per-image size): pipelines of 3, 3 and 1 image, the cap cutting the second.
    rows = [
        {**row, "width": None, "height": None}
        for row in sample_manifest(images, catalog_site.base_url, presets=("marketplace",)).to_pylist()
    ]
    conf = {
        "manifest": catalog_bucket.put_manifest(pa.Table.from_pylist(rows, schema=manifests.MANIFEST_SCHEMA)),
        "results": catalog_bucket.uri("results"),
        "images": catalog_bucket.uri("images"),
        "urls_per_pipeline": 3,
        "max_credits": 4,
        "contact_sheet_images": 0,
    }
    used = pipeline_count(leapi_server)

    dag_run = run_dag(*FANOUT, conf)

    assert dag_run.state == "success", task_states(dag_run)
    assert pipeline_count(leapi_server) - used == 4
    results = {row["image_id"]: row for row in catalog_bucket.results().to_pylist()}
    assert [results[i.image_id]["status"] for i in images] == ["done"] * 4 + ["deferred_cap"] * 3
    assert results[images[6].image_id]["error"] == "not submitted: the run's max_credits=4 was reached"
    per_pipeline = Counter(results[i.image_id]["pipeline_id"] for i in images[:4])
    assert sorted(per_pipeline.values()) == [1, 3]
    assert "max_credits=4: 3 of the 7 image(s) to enhance are not submitted this run" in _logs(caplog, capfd)


def test_dry_run_then_real_run(
    catalog_env, catalog_site, catalog_bucket, leapi_server, caplog, capfd
) -> None:
    """A dry run plans, previews and spends nothing; the real run of the same date plans afresh and pays."""
    images = catalog_site.add_images(5, prefix="dry")
    rows = sample_manifest(images, catalog_site.base_url).to_pylist()
    rows.append({**rows[0], "image_id": "dry-bad", "preset": "instagram"})
    conf = {
        "manifest": catalog_bucket.put_manifest(pa.Table.from_pylist(rows, schema=manifests.MANIFEST_SCHEMA)),
        "results": catalog_bucket.uri("results"),
        "images": catalog_bucket.uri("images"),
        "urls_per_pipeline": 2,
        "contact_sheet_images": 0,
        "dry_run": True,
    }
    day = datetime(2026, 8, 1, tzinfo=UTC)
    used = pipeline_count(leapi_server)

    dry = run_dag(*FANOUT, conf, logical_date=day)

    assert dry.state == "success", task_states(dry)
    assert task_states(dry)["finalize"][0] == "skipped", "no result table, so no asset event"
    assert pipeline_count(leapi_server) == used, "a dry run submits nothing"
    assert catalog_bucket.results().num_rows == 0
    assert not catalog_bucket.keys("images/")
    previews = [k for k in catalog_bucket.keys("results/_dry_runs/") if k.endswith("/preview.parquet")]
    assert len(previews) == 1 and catalog_bucket.keys(previews[0].replace("preview.parquet", "plan.json"))
    preview = pq.read_table(io.BytesIO(catalog_bucket.get(previews[0])["Body"].read()))
    assert _statuses(preview) == {**{i.image_id: "planned" for i in images}, "dry-bad": "rejected_row"}
    assert re.search(
        r"Dry run: 5 image\(s\) would be submitted in 5 pipeline\(s\) and 1 batch\(es\), costing 5 credit\(s\); "
        r"nothing was submitted",
        _logs(caplog, capfd),
    )

    real = run_dag(*FANOUT, conf | {"dry_run": False}, logical_date=day)

    assert real.state == "success", task_states(real)
    assert pipeline_count(leapi_server) - used == 5
    assert _statuses(catalog_bucket.results()) == {
        **{i.image_id: "done" for i in images},
        "dry-bad": "rejected_row",
    }


def _usage_hiding_proxy(upstream: str, usage_body: bytes) -> type[http.server.BaseHTTPRequestHandler]:
    """A real HTTP proxy to ``upstream`` (``leapi-server``) that answers ``/v1/me/usage/`` with
    ``usage_body``: a usage answer the client cannot read a credits figure from, which ``leapi-server``
    itself never sends."""

    class Proxy(http.server.BaseHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

        def _forward(self) -> None:
            if self.path.split("?")[0].rstrip("/") == "/v1/me/usage":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(usage_body)))
                self.end_headers()
                self.wfile.write(usage_body)
                return
            length = int(self.headers.get("Content-Length") or 0)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            answer = httpx.request(
                self.command, upstream + self.path, headers=headers, content=self.rfile.read(length)
            )
            self.send_response(answer.status_code)
            for name, value in answer.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_HEAD = _forward

    return Proxy


@pytest.fixture
def opaque_usage_leapi(leapi_server: RunningServer) -> Iterator[dict[str, str]]:
    """Base URLs of proxies to ``leapi-server`` whose usage answer is unreadable."""
    with (
        serve_http(_usage_hiding_proxy(leapi_server.base_url, b"<html>usage</html>")) as html_url,
        serve_http(
            _usage_hiding_proxy(leapi_server.base_url, json.dumps({"plan": "pro"}).encode())
        ) as plain_url,
    ):
        yield {"html": html_url, "no_figure": plain_url}


def test_unreadable_usage_fails_the_plan_unless_the_guard_is_off(
    catalog_env, catalog_site, catalog_bucket, leapi_server, opaque_usage_leapi, caplog, capfd
) -> None:
    images = catalog_site.add_images(3, prefix="guard")
    conf = {
        "manifest": catalog_bucket.put_manifest(sample_manifest(images, catalog_site.base_url)),
        "results": catalog_bucket.uri("results"),
        "images": catalog_bucket.uri("images"),
        "contact_sheet_images": 0,
    }
    used = pipeline_count(leapi_server)

    # (max_retries: the client retries a body that is not JSON, as it would a proxy's error page)
    for base_url, problem in (
        (opaque_usage_leapi["html"], "LEAPI's usage answer could not be read"),
        (
            opaque_usage_leapi["no_figure"],
            "has no remaining-credits figure the client can read (fields: plan)",
        ),
    ):
        with leapi_connection(base_url, leapi_server.api_key, max_retries=1):
            refused = run_dag(*FANOUT, conf)
        assert refused.state == "failed" and task_states(refused)["plan"][0] == "failed"
        logs = _logs(caplog, capfd)
        assert problem in logs and 'Set the param quota_guard="off"' in logs
        assert pipeline_count(leapi_server) == used, "nothing is spent unguarded"
        assert catalog_bucket.results().num_rows == 0

    with leapi_connection(opaque_usage_leapi["html"], leapi_server.api_key, max_retries=1):
        unguarded = run_dag(*FANOUT, conf | {"quota_guard": "off"})

    assert unguarded.state == "success", task_states(unguarded)
    assert pipeline_count(leapi_server) - used == 3
    assert set(_statuses(catalog_bucket.results()).values()) == {"done"}
    assert "quota_guard is off" in _logs(caplog, capfd)
