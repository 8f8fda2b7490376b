"""LeapiResultToS3Operator against leapi-server and moto's S3 server (server mode, on loopback)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from PIL import Image

from devkit.server import wait_for_pipeline
from leapi.errors import LeapiResultMissingError
from leapi_provider.operators.leapi import XCOM_FILES_KEY
from leapi_provider.transfers.leapi_to_s3 import (
    META_PIPELINE_ID,
    META_SHA256,
    LeapiResultToS3Operator,
)


class FakeTI:
    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def done_pipeline(server, urls: list[str], **op: Any) -> int:
    with server.client() as client:
        answer = client.post(
            "/v1/pipeline",
            json={"source": {"http": {"url": urls}}, "operations": [{"op": "preset/realestate", **op}]},
        )
        return wait_for_pipeline(client, answer.json()["pipeline"]["id"])["id"]


def transfer(**kwargs: Any) -> LeapiResultToS3Operator:
    kwargs.setdefault("task_id", "to_s3")
    return LeapiResultToS3Operator(**kwargs)


def test_results_land_in_s3_verified_typed_tagged_and_retry_safe(
    leapi_server, leapi_conn, source_photos, moto_s3, s3_bucket, tmp_path
):
    # An explicit output format (the preset's default would be JPEG for both).
    pipeline_id = done_pipeline(
        leapi_server,
        [source_photos["burger.jpg"], source_photos["astronaut.png"]],
        width=640,
        image_format="PNG",
    )
    context = {"ti": FakeTI()}
    op = transfer(pipeline_id=pipeline_id, s3_bucket=s3_bucket, tags={"team": "catalog", "run": "r 1"})
    uris = op.execute(context)
    keys = [
        f"leapi/realestate/burger__realestate__{pipeline_id}-0.png",
        f"leapi/realestate/astronaut__realestate__{pipeline_id}-1.png",
    ]
    assert uris == [f"s3://{s3_bucket}/{key}" for key in keys]

    s3 = moto_s3.client()
    records = context["ti"].xcoms[XCOM_FILES_KEY]
    for key, record, mime in zip(keys, records, ("image/png", "image/png"), strict=True):
        obj = s3.get_object(Bucket=s3_bucket, Key=key)
        body = obj["Body"].read()
        assert obj["ContentType"] == mime
        assert obj["Metadata"][META_PIPELINE_ID] == str(pipeline_id)
        assert obj["Metadata"][META_SHA256] == hashlib.sha256(body).hexdigest() == record["sha256"]
        assert record["bytes"] == len(body)
        (tmp_path / "x").write_bytes(body)
        with Image.open(tmp_path / "x") as image:
            assert image.width == 640 == record["width"]
        tags = s3.get_object_tagging(Bucket=s3_bucket, Key=key)["TagSet"]
        assert {t["Key"]: t["Value"] for t in tags} == {"team": "catalog", "run": "r 1"}

    # A retried transfer keeps the complete objects it already wrote: nothing is rewritten.
    etags = [s3.head_object(Bucket=s3_bucket, Key=k)["LastModified"] for k in keys]
    again = {"ti": FakeTI()}
    assert op.execute(again) == uris
    assert [s3.head_object(Bucket=s3_bucket, Key=k)["LastModified"] for k in keys] == etags
    assert all(r["skipped_existing"] for r in again["ti"].xcoms[XCOM_FILES_KEY])


def test_multipart_upload_for_large_results(leapi_server, leapi_conn, source_photos, moto_s3, s3_bucket):
    pipeline_id = done_pipeline(leapi_server, [source_photos["burger.jpg"]], width=3000, image_format="PNG")
    op = transfer(
        pipeline_id=pipeline_id,
        s3_bucket=s3_bucket,
        s3_key_template="big/{pipeline_id}/{file_name}",
        multipart_threshold=5 * 1024 * 1024,
        multipart_chunksize=5 * 1024 * 1024,
    )
    (uri,) = op.execute({"ti": FakeTI()})
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key=uri.split("/", 3)[3])
    assert head["ContentLength"] > 5 * 1024 * 1024, "the test needs a result above the multipart threshold"
    assert "-" in head["ETag"], "a multipart upload's ETag carries its part count"


def test_foreign_objects_are_not_overwritten_without_replace(
    leapi_server, leapi_conn, source_photos, moto_s3, s3_bucket
):
    pipeline_id = done_pipeline(leapi_server, [source_photos["cat.jpg"]], width=100)
    key = f"mine/cat__realestate__{pipeline_id}.jpg"
    moto_s3.client().put_object(Bucket=s3_bucket, Key=key, Body=b"someone else's")
    op = transfer(pipeline_id=pipeline_id, s3_bucket=s3_bucket, s3_key_template="mine/{file_name}")
    with pytest.raises(FileExistsError, match="replace=True"):
        op.execute({"ti": FakeTI()})
    transfer(
        pipeline_id=pipeline_id, s3_bucket=s3_bucket, s3_key_template="mine/{file_name}", replace=True
    ).execute({"ti": FakeTI()})
    assert moto_s3.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read()[:2] == b"\xff\xd8"


def test_partial_pipeline_copies_the_good_results_then_fails(
    leapi_server, leapi_conn, source_photos, source_server, moto_s3, s3_bucket
):
    pipeline_id = done_pipeline(
        leapi_server, [source_photos["cat.jpg"], f"{source_server}/missing.png"], width=90
    )
    with pytest.raises(LeapiResultMissingError, match="result 1"):
        transfer(pipeline_id=pipeline_id, s3_bucket=s3_bucket).execute({"ti": FakeTI()})
    listed = moto_s3.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert [o["Key"] for o in listed] == [f"leapi/realestate/cat__realestate__{pipeline_id}-0.jpg"]


def test_the_key_template_is_checked_once_rendered_before_anything_is_read():
    """``__init__`` only assigns (templates render after it): the rendered template is checked first thing
    in ``execute``, before the LEAPI or S3 connection is even looked up."""
    unknown = transfer(pipeline_id=1, s3_bucket="b", s3_key_template="x/{nope}/{file_name}")
    assert unknown.s3_key_template == "x/{nope}/{file_name}", "only assigned"
    with pytest.raises(ValueError, match="unknown field"):
        unknown.execute({"ti": FakeTI()})
    with pytest.raises(ValueError, match="file_name"):
        transfer(pipeline_id=1, s3_bucket="b", s3_key_template="x/{pipeline_id}.jpg").execute(
            {"ti": FakeTI()}
        )
    transfer(pipeline_id=1, s3_bucket="b", s3_key_template="{{ params.prefix }}/{file_name}")
