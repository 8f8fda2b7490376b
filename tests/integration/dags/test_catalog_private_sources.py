"""End to end: ``s3://`` sources in a private bucket (moto refuses unsigned reads), presigned at submit.

The source server serves none of them; LEAPI (``leapi-server``) gets presigned URLs, while the logs, the
XComs and the result table only ever show the ``s3://`` URIs. Incremental runs fingerprint them from the
object metadata (ETag and size), with no HTTP request to the objects.
"""

from __future__ import annotations

import io
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from devkit.airflow_dags import task_states
from devkit.catalog import sample_manifest, write_sample_images
from tests.fixtures.catalog import pipeline_count, run_dag

pytestmark = pytest.mark.slow
DAG = ("dags/catalog_reenhancement.py", "catalog_reenhancement")
FANOUT = ("example_dags/example_leapi_manifest_fanout.py", "example_leapi_manifest_fanout")
#: What a presigned S3 URL carries (SigV4 and SigV2 forms): none of it may leave the submit.
PRESIGNED = re.compile(r"X-Amz-Signature|X-Amz-Credential|AWSAccessKeyId=|[?&]Signature=")


def _xcom_texts(dag_run: Any) -> list[str]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.run_id == dag_run.run_id).all()
        return [f"{row.task_id}/{row.key}: {row.value}" for row in rows]


def _lifetime_s(url: str) -> float:
    """How long a presigned URL is valid from now: ``X-Amz-Expires`` (SigV4) or ``Expires`` (SigV2)."""
    query = parse_qs(urlsplit(url).query)
    if "X-Amz-Expires" in query:
        signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return signed.timestamp() + int(query["X-Amz-Expires"][0]) - time.time()
    return int(query["Expires"][0]) - time.time()


def _day(results: pa.Table, day: str) -> dict[str, dict[str, Any]]:
    return {r["image_id"]: r for r in results.filter(pc.equal(results["run_date"], day)).to_pylist()}


def test_private_bucket_sources_are_presigned_and_never_shown(
    catalog_env, catalog_site, catalog_bucket, leapi_server, tmp_path: Path, caplog, capfd
) -> None:
    bucket = catalog_bucket
    photos = write_sample_images(tmp_path, 3, prefix="private")
    for photo in photos:
        bucket.client.upload_file(str(tmp_path / photo.file_name), bucket.name, f"sources/{photo.file_name}")
    public = catalog_site.add_images(1, prefix="public")
    rows = [
        *sample_manifest(photos, f"s3://{bucket.name}/sources").to_pylist(),
        *sample_manifest(public, catalog_site.base_url).to_pylist(),
        {**sample_manifest(photos[:1], "").to_pylist()[0], "image_id": "private-missing",
         "source_url": f"s3://{bucket.name}/sources/missing.jpg"},
    ]  # fmt: skip
    manifest = pa.Table.from_pylist(rows, schema=sample_manifest(photos, "").schema)
    unsigned = httpx.get(bucket.client.meta.endpoint_url + f"/{bucket.name}/sources/{photos[0].file_name}")
    assert unsigned.status_code == 403, "the bucket is private: only a presigned URL can read it"
    conf = {
        "manifest": bucket.put_manifest(manifest),
        "results": bucket.uri("results"),
        "images": bucket.uri("images"),
        "contact_sheet_images": 4,
        "presign_expires_in": 3 * 60 * 60,
    }
    day1 = datetime(2026, 7, 1, tzinfo=UTC)
    used = pipeline_count(leapi_server)

    first_run = run_dag(*DAG, conf, logical_date=day1)

    assert first_run.state == "success", task_states(first_run)
    first = _day(bucket.results(), "2026-07-01")
    missing = first.pop("private-missing")
    assert missing["status"] == "error" and "not submitted" in missing["error"]
    assert {r["status"] for r in first.values()} == {"done"} and len(first) == 4
    for photo in photos:
        row = first[photo.image_id]
        assert row["source_url"] == f"s3://{bucket.name}/sources/{photo.file_name}"
        head = bucket.client.head_object(Bucket=bucket.name, Key=f"sources/{photo.file_name}")
        assert row["source_fingerprint"] == f"etag:{head['ETag']};size:{head['ContentLength']}"
        assert row["input_bytes"] == head["ContentLength"]
        assert row["output_width"] == photo.width * 2
    assert pipeline_count(leapi_server) - used == 4

    # LEAPI was handed presigned URLs, valid for the param's 3 hours ...
    with leapi_server.client() as api:
        pipeline_id = first[photos[0].image_id]["pipeline_id"]
        sent = api.get(f"/v1/pipeline/{pipeline_id}").json()["pipeline"]["source"]["http"]["url"]
    in_bucket = [url for url in sent if f"/{bucket.name}/sources/" in url]
    assert in_bucket and all(PRESIGNED.search(url) for url in in_bucket), sent
    for url in in_bucket:
        assert _lifetime_s(url) == pytest.approx(3 * 60 * 60, abs=300)
    # ... and nothing else ever shows one.
    captured = capfd.readouterr()
    logs = caplog.text + captured.out + captured.err
    assert "presigned" in logs, "the submit says that it presigned (without the URLs)"
    assert not PRESIGNED.search(logs)
    assert not [text for text in _xcom_texts(first_run) if PRESIGNED.search(text)]
    day_folder = "results/run_date=2026-07-01/"
    sheets = [k for k in bucket.keys(day_folder) if k.endswith(".png")]
    (report_key,) = [k for k in bucket.keys(day_folder) if k.endswith(".html")]
    assert len(sheets) == 1, "the contact sheet reads the private sources through the connection"
    report = bucket.get(report_key)["Body"].read().decode()
    assert f'href="../../images/enhanced/marketplace/{photos[0].image_id}.jpg"' in report
    assert "source answered S3 404 at change detection; not submitted" in report
    assert not PRESIGNED.search(report)
    table = bucket.results()
    for column in table.column_names:
        if pa.types.is_string(table.schema.field(column).type):
            assert not any(PRESIGNED.search(v) for v in table[column].to_pylist() if v), column

    # Day 2: one object replaced (new ETag): only it is re-enhanced; the others are skipped from their
    # metadata alone.
    changed = photos[1]
    picture = Image.open(tmp_path / changed.file_name).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=70)
    bucket.client.put_object(Bucket=bucket.name, Key=f"sources/{changed.file_name}", Body=buffer.getvalue())

    assert run_dag(*DAG, conf, logical_date=day1 + timedelta(days=1)).state == "success"
    second = _day(bucket.results(), "2026-07-02")
    del second["private-missing"]
    assert {k: r["status"] for k, r in second.items()} == {
        **{p.image_id: "skipped_unchanged" for p in (photos[0], photos[2], public[0])},
        changed.image_id: "done",
    }
    assert pipeline_count(leapi_server) - used == 5
    assert not PRESIGNED.search(caplog.text + "".join(capfd.readouterr()))


def test_leapi_errors_about_a_private_source_name_its_uri_not_the_presigned_url(
    catalog_env, catalog_bucket, leapi_server, tmp_path: Path, caplog, capfd
) -> None:
    """Not incremental, so a missing object is submitted with a presigned URL: LEAPI's errors about it
    (leapi-server also lists ``<url>: source answered HTTP 404`` in the pipeline's ``errors``) reach the
    row, the trigger's event and the logs without the presigned URL.

    ``defer_after=0`` sends the wait to the triggerer whenever the pipeline is still running after the
    submit; on a quiet machine it may already have failed by then and the worker reads its errors itself:
    either way no presigned URL may show."""
    bucket = catalog_bucket
    (photo,) = write_sample_images(tmp_path, 1, prefix="vault")
    bucket.client.upload_file(str(tmp_path / photo.file_name), bucket.name, f"sources/{photo.file_name}")
    rows = sample_manifest([photo], f"s3://{bucket.name}/sources").to_pylist()
    rows.append(
        {**rows[0], "image_id": "vault-missing", "source_url": f"s3://{bucket.name}/sources/gone.jpg"}
    )
    conf = {
        "manifest": bucket.put_manifest(
            pa.Table.from_pylist(rows, schema=sample_manifest([photo], "").schema)
        ),
        "results": bucket.uri("results"),
        "images": bucket.uri("images"),
        "contact_sheet_images": 0,
        "defer_after": 0,  # (the wait goes through the trigger, whose event quotes the errors)
    }

    dag_run = run_dag(*FANOUT, conf)

    assert dag_run.state == "success", task_states(dag_run)
    results = {r["image_id"]: r for r in bucket.results().to_pylist()}
    assert results[photo.image_id]["status"] == "done"
    missing = results["vault-missing"]
    assert missing["status"] == "error" and "404" in missing["error"]
    assert missing["source_url"] == f"s3://{bucket.name}/sources/gone.jpg"
    assert not PRESIGNED.search(missing["error"])
    captured = capfd.readouterr()
    logs = caplog.text + captured.out + captured.err
    assert not PRESIGNED.search(logs)
    assert not [text for text in _xcom_texts(dag_run) if PRESIGNED.search(text)]
