"""End to end: the marketplace feed ETL (feed key layout, URL export) and the quota guard."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from devkit.catalog import sample_manifest
from devkit.server import RunningServer, running_server
from tests.fixtures.airflow import leapi_connection
from tests.fixtures.catalog import pipeline_count, run_dag

pytestmark = pytest.mark.slow
DAG = ("dags/marketplace_feed_etl.py", "marketplace_feed_etl")
#: (no task retries: a failing transfer fails the run at once)
FANOUT = ("example_dags/example_leapi_manifest_fanout.py", "example_leapi_manifest_fanout")


def _feed(catalog_bucket, key: str) -> list[dict[str, str]]:
    body = catalog_bucket.get(key)["Body"].read().decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_feed_layout_and_export(catalog_env, catalog_site, catalog_bucket, leapi_server) -> None:
    images = catalog_site.add_images(5, prefix="feed")
    conf = {
        "manifest": catalog_bucket.put_manifest(sample_manifest(images, catalog_site.base_url)),
        "results": catalog_bucket.uri("results"),
        "images": catalog_bucket.uri("cdn"),
        "export": catalog_bucket.uri("export"),
        "feed_url_template": "https://cdn.example.com/{key}",
        "contact_sheet_images": 0,
    }
    day = datetime(2026, 5, 1, tzinfo=UTC)

    assert run_dag(*DAG, conf, logical_date=day).state == "success"

    feed = {row["image_id"]: row for row in _feed(catalog_bucket, "export/latest/feed.csv")}
    assert sorted(feed) == [image.image_id for image in images]
    for image in images:
        row = feed[image.image_id]
        key = row["image_url"].removeprefix("https://cdn.example.com/")
        # feed/{preset}/{image_id}/{first 16 hex of the sha256}.{ext}
        assert key == f"cdn/feed/{row['preset']}/{image.image_id}/{row['sha256'][:16]}.jpg"
        data = catalog_bucket.get(key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == int(row["bytes"])
        assert row["status"] == "done" and int(row["width"]) == image.width * 2
        assert json.loads(row["attributes"]) == {"photo": image.photo, "source_quality": str(image.quality)}
    per_run = [k for k in catalog_bucket.keys("export/run_date=2026-05-01/") if k.endswith(".parquet")]
    assert len(per_run) == 1

    # The next day nothing changed: same URLs in the export, nothing paid.
    used = pipeline_count(leapi_server)
    assert run_dag(*DAG, conf, logical_date=day + timedelta(days=1)).state == "success"
    again = {row["image_id"]: row for row in _feed(catalog_bucket, "export/latest/feed.csv")}
    assert {k: v["image_url"] for k, v in again.items()} == {k: v["image_url"] for k, v in feed.items()}
    assert {v["status"] for v in again.values()} == {"skipped_unchanged"}
    assert pipeline_count(leapi_server) == used


@pytest.fixture(scope="module")
def small_quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A leapi-server whose keys (one per test: each is its own account) have 5 credits a month."""
    with running_server(
        data_dir=tmp_path_factory.mktemp("small-quota"),
        api_keys=("quota-a", "quota-b"),
        extra_args=("--workers", "1", "--monthly-quota", "5", "--rate-limit-per-minute", "0"),
    ) as server:
        yield server


def test_quota_guard(catalog_env, catalog_site, catalog_bucket, small_quota_server) -> None:
    images = catalog_site.add_images(8, prefix="quota")
    conf = {
        "manifest": catalog_bucket.put_manifest(sample_manifest(images, catalog_site.base_url)),
        "results": catalog_bucket.uri("results"),
        "images": catalog_bucket.uri("cdn"),
        "contact_sheet_images": 0,
        "incremental": False,
    }

    with leapi_connection(small_quota_server.base_url, "quota-a"):
        refused = run_dag(*DAG, conf, logical_date=datetime(2026, 6, 1, tzinfo=UTC))

    assert refused.state == "failed"
    assert _used(small_quota_server, "quota-a") == 0  # failed before spending anything
    assert catalog_bucket.results().num_rows == 0

    with leapi_connection(small_quota_server.base_url, "quota-a"):
        partial = run_dag(
            *DAG,
            conf | {"on_quota_shortfall": "process_what_fits"},
            logical_date=datetime(2026, 6, 2, tzinfo=UTC),
        )

    assert partial.state == "success"
    assert _used(small_quota_server, "quota-a") == 5
    results = {row["image_id"]: row for row in catalog_bucket.results().to_pylist()}
    assert [results[i.image_id]["status"] for i in images] == ["done"] * 5 + ["deferred_quota"] * 3
    assert results[images[7].image_id]["error"] == "not submitted: 5 credits were left"


def test_rerun_at_the_quota_limit_resumes(
    catalog_env, catalog_site, catalog_bucket, small_quota_server
) -> None:
    """The first attempt spent every credit and then failed; the re-run needs none and is not refused."""
    images = catalog_site.add_images(5, prefix="limit")
    images_bucket = f"{catalog_bucket.name}-later"
    conf = {
        "manifest": catalog_bucket.put_manifest(sample_manifest(images, catalog_site.base_url)),
        "results": catalog_bucket.uri("results"),
        "images": f"s3://{images_bucket}/cdn",
        "contact_sheet_images": 0,
    }
    day = datetime(2026, 6, 3, tzinfo=UTC)
    with leapi_connection(small_quota_server.base_url, "quota-b"):
        assert run_dag(*FANOUT, conf, logical_date=day).state == "failed"  # no images bucket yet
    assert _used(small_quota_server, "quota-b") == 5

    catalog_bucket.client.create_bucket(Bucket=images_bucket)
    with leapi_connection(small_quota_server.base_url, "quota-b"):
        assert run_dag(*FANOUT, conf, logical_date=day).state == "success"
    assert _used(small_quota_server, "quota-b") == 5
    assert {r["status"] for r in catalog_bucket.results().to_pylist()} == {"done"}


def _used(server: RunningServer, api_key: str) -> int:
    with server.client(api_key) as client:
        return client.get("/v1/me/usage/").json()["used"]
