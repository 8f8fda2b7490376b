"""End to end: the daily incremental re-enhancement skips unchanged images and re-enhances changed ones."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from devkit.airflow_dags import load_dag
from devkit.catalog import sample_manifest
from devkit.server import RunningServer
from devkit.sources import sample_photo
from tests.fixtures.airflow import REPO
from tests.fixtures.catalog import docs_only_params, pipeline_count, run_dag

pytestmark = pytest.mark.slow
DAG = ("dags/catalog_reenhancement.py", "catalog_reenhancement")


@pytest.fixture(scope="session")
def leapi_server(leapi_server_both: RunningServer) -> RunningServer:
    """The daily runs here hold against both ``--compat`` modes: nothing in them may depend on an
    extension (no Idempotency-Key, no results[].error, an unreadable usage body in docs-only mode)."""
    return leapi_server_both


def test_daily_schedule_and_asset() -> None:
    dag = load_dag(REPO / DAG[0], DAG[1])
    assert dag.schedule == "@daily"
    assert dag.params["incremental"] is True
    outlets = dag.get_task("finalize").outlets
    assert [o.name for o in outlets] == ["leapi_catalog_results"]


def _day(results: pa.Table, day: str) -> dict[str, dict]:
    rows = results.filter(pc.equal(results["run_date"], day)).to_pylist()
    return {row["image_id"]: row for row in rows}


def test_skips_unchanged_and_reenhances_changed(
    catalog_env, catalog_site, catalog_bucket, leapi_server
) -> None:
    images = catalog_site.add_images(6, prefix="daily")
    manifest = sample_manifest(images, catalog_site.base_url)
    dead_link = {
        **manifest.to_pylist()[0],
        "image_id": "daily-gone",
        "source_url": catalog_site.url("gone.jpg"),
    }
    manifest = pa.Table.from_pylist([*manifest.to_pylist(), dead_link], schema=manifest.schema)
    conf = {
        "manifest": catalog_bucket.put_manifest(manifest),
        "results": catalog_bucket.uri("results"),
        "images": catalog_bucket.uri("images"),
        "urls_per_pipeline": 4,
        "contact_sheet_images": 2,
        **docs_only_params(leapi_server),
    }
    day1 = datetime(2026, 4, 1, tzinfo=UTC)
    used = pipeline_count(leapi_server)

    assert run_dag(*DAG, conf, logical_date=day1).state == "success"
    first = _day(catalog_bucket.results(), "2026-04-01")
    gone = first.pop("daily-gone")
    assert (
        gone["status"] == "error"
        and gone["error"] == "source answered HTTP 404 at change detection; not submitted"
    )
    assert {r["status"] for r in first.values()} == {"done"} and len(first) == 6
    assert all(r["source_fingerprint"].startswith("last-modified:") for r in first.values())
    assert pipeline_count(leapi_server) - used == 6

    # Day 2: nothing changed -> every image skipped, its previous output carried forward, no credit spent
    # (the dead link is not submitted either).
    assert run_dag(*DAG, conf, logical_date=day1 + timedelta(days=1)).state == "success"
    second = _day(catalog_bucket.results(), "2026-04-02")
    assert second.pop("daily-gone")["status"] == "error"
    assert {r["status"] for r in second.values()} == {"skipped_unchanged"}
    for image_id, row in second.items():
        assert row["output_uri"] == first[image_id]["output_uri"]
        assert row["output_sha256"] == first[image_id]["output_sha256"]
        assert row["pipeline_id"] == first[image_id]["pipeline_id"]
    assert pipeline_count(leapi_server) - used == 6

    # Day 3: one source replaced (new bytes, newer Last-Modified), one row asks for another size.
    changed_source = images[1]
    path = catalog_site.folder / changed_source.file_name
    sample_photo("coins", size=None).resize((changed_source.width, changed_source.height)).save(
        path, quality=50
    )
    later = path.stat().st_mtime + 3600
    os.utime(path, (later, later))
    rows = manifest.to_pylist()
    rows[4]["width"] += 10
    rows[4]["height"] += 10  # (the box, aspect kept: the width binds)
    catalog_bucket.put_manifest(pa.Table.from_pylist(rows, schema=manifest.schema))

    assert run_dag(*DAG, conf, logical_date=day1 + timedelta(days=2)).state == "success"
    third = _day(catalog_bucket.results(), "2026-04-03")
    del third["daily-gone"]
    statuses = {image_id: row["status"] for image_id, row in third.items()}
    assert statuses == {
        image.image_id: "done" if image in (changed_source, images[4]) else "skipped_unchanged"
        for image in images
    }
    assert third[changed_source.image_id]["output_sha256"] != first[changed_source.image_id]["output_sha256"]
    assert third[images[4].image_id]["operation_hash"] != first[images[4].image_id]["operation_hash"]
    assert third[images[4].image_id]["output_width"] == images[4].width * 2 + 10
    assert pipeline_count(leapi_server) - used == 8
