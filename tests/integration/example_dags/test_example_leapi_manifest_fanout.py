"""End to end: the fan-out example DAG on 60 manifest rows against leapi-server and moto's S3 server."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from PIL import Image

from devkit.airflow_dags import load_dag
from devkit.catalog import sample_manifest
from tests.fixtures.airflow import REPO
from tests.fixtures.catalog import pipeline_count, run_dag

pytestmark = pytest.mark.slow
FANOUT = ("example_dags/example_leapi_manifest_fanout.py", "example_leapi_manifest_fanout")


def test_dagbag_imports_it() -> None:
    dag = load_dag(REPO / FANOUT[0], FANOUT[1])
    assert set(dag.task_ids) == {"plan", "batch", "finalize"}
    batch = dag.get_task("batch")
    assert batch.pool == "leapi" and batch.partial_kwargs["deferrable"] is True
    assert dag.get_task("finalize").trigger_rule == "all_done"


def test_sixty_rows_three_bad_two_broken(catalog_env, catalog_site, catalog_bucket, leapi_server) -> None:
    images = catalog_site.add_images(55, prefix="fan")
    manifest = sample_manifest(images, catalog_site.base_url).to_pylist()
    (catalog_site.folder / "not-an-image.jpg").write_bytes(b"this is not a JPEG")
    broken = [
        {**manifest[0], "image_id": "broken-not-image", "source_url": catalog_site.url("not-an-image.jpg")},
        {**manifest[0], "image_id": "broken-404", "source_url": catalog_site.url("missing.jpg")},
    ]
    bad = [
        {**manifest[1], "image_id": "bad-no-url", "source_url": None},
        {**manifest[1], "image_id": "bad-preset", "preset": "instagram"},
        {**manifest[2], "source_url": catalog_site.url("other.jpg")},  # duplicate image_id
    ]
    rows = manifest[:20] + broken + bad[:2] + manifest[20:] + bad[2:]
    assert len(rows) == 60
    nullable = pa.schema([f.with_nullable(True) for f in sample_manifest(images[:1], "http://x").schema])
    table = pa.Table.from_pylist(rows, schema=nullable)
    conf = {
        "manifest": catalog_bucket.put_manifest(table),
        "results": catalog_bucket.uri("results"),
        "images": catalog_bucket.uri("images"),
        "urls_per_pipeline": 4,
        "max_batches": 5,
        "contact_sheet_images": 4,
    }
    used_before = pipeline_count(leapi_server)
    run = run_dag(*FANOUT, conf)

    assert run.state == "success"
    results = catalog_bucket.results()
    assert results.num_rows == 60
    by_id = {}
    for row in results.to_pylist():
        by_id.setdefault(row["image_id"], []).append(row)
    # Row by row: one terminal row per manifest row, in the manifest's positions.
    assert sorted(results["manifest_row"].to_pylist()) == list(range(60))
    for image in images:
        (row,) = [r for r in by_id[image.image_id] if r["status"] != "rejected_row"]  # the duplicate's is
        assert row["status"] == "done", row
        assert (row["input_width"], row["input_height"]) == (image.width, image.height)
        assert (row["output_width"], row["output_height"]) == (image.width * 2, image.height * 2)
        assert row["output_format"] == "JPEG" and row["pipeline_id"] is not None
        assert json.loads(row["operation_json"])["width"] == image.width * 2
        assert row["output_uri"] == catalog_bucket.uri(
            f"images/enhanced/{row['preset']}/{image.image_id}.jpg"
        )
        body = catalog_bucket.get(row["output_uri"].split("/", 3)[3])
        data = body["Body"].read()
        assert body["ContentType"] == "image/jpeg"
        assert len(data) == row["output_bytes"] and hashlib.sha256(data).hexdigest() == row["output_sha256"]
        assert row["submitted_at"] <= row["finished_at"] and row["dag_run_id"] == run.run_id
    (not_image,) = by_id["broken-not-image"]
    (missing,) = by_id["broken-404"]
    assert not_image["status"] == "error" and "not a supported image" in not_image["error"]
    assert missing["status"] == "error" and "404" in missing["error"]
    assert by_id["bad-no-url"][0]["status"] == "rejected_row"
    assert by_id["bad-no-url"][0]["error"] == "missing source_url"
    assert "unknown preset 'instagram'" in by_id["bad-preset"][0]["error"]
    duplicate = [r for r in by_id[images[2].image_id] if r["status"] == "rejected_row"]
    assert len(duplicate) == 1 and duplicate[0]["error"].startswith(
        "duplicate image_id (kept manifest row 2)"
    )
    # Only what was valid was paid for: 55 photos + 2 broken sources.
    assert pipeline_count(leapi_server) - used_before == 57
    # The objects in S3 are exactly the enhanced images; the table and its contact sheet are beside them.
    assert len(catalog_bucket.keys("images/")) == 55
    sheets = [k for k in catalog_bucket.keys("results/") if k.endswith(".png")]
    assert len(sheets) == 1 and "/run_date=" in sheets[0] and "/_contact_sheet-" in sheets[0]
    with Image.open(catalog_bucket.get(sheets[0])["Body"]) as sheet:
        assert sheet.format == "PNG" and sheet.width > 400


def test_rerun_after_failed_transfer_resubmits_nothing(
    catalog_env, catalog_site, catalog_bucket, leapi_server
) -> None:
    images = catalog_site.add_images(10, prefix="resume")
    images_bucket = f"{catalog_bucket.name}-images"  # does not exist yet: every transfer fails
    conf = {
        "manifest": catalog_bucket.put_manifest(sample_manifest(images, catalog_site.base_url)),
        "results": catalog_bucket.uri("results"),
        "images": f"s3://{images_bucket}/enhanced",
        "urls_per_pipeline": 3,
        "max_batches": 2,
        "contact_sheet_images": 0,
    }
    logical_date = datetime(2026, 3, 1, tzinfo=UTC)
    used_before = pipeline_count(leapi_server)

    failed = run_dag(*FANOUT, conf, logical_date=logical_date)

    assert failed.state == "failed"
    assert pipeline_count(leapi_server) - used_before == 10
    first = catalog_bucket.results()
    assert first.num_rows == 10 and set(first["status"].to_pylist()) == {"error"}
    assert all("did not complete" in e for e in first["error"].to_pylist())

    catalog_bucket.client.create_bucket(Bucket=images_bucket)
    rerun = run_dag(*FANOUT, conf, logical_date=logical_date)  # the same DAG run, all tasks again

    assert rerun.state == "success"
    assert pipeline_count(leapi_server) - used_before == 10  # nothing paid twice
    final = catalog_bucket.results()
    assert final.num_rows == 10  # the re-run replaced its own files: still one row per image
    assert set(final["status"].to_pylist()) == {"done"}
    assert (
        final["pipeline_id"].null_count == 0 and final["run_key"].to_pylist() == first["run_key"].to_pylist()
    )
    keys = catalog_bucket.client.list_objects_v2(Bucket=images_bucket)["Contents"]
    assert len(keys) == 10
