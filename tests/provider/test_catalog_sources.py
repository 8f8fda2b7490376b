"""Private-bucket sources against moto's S3 server (which refuses unsigned reads): presigned URLs that
read the object, signed afresh on every submit, and fingerprints from object metadata."""

from __future__ import annotations

import time

import httpx

from leapi_provider.catalog.fingerprints import source_fingerprints
from leapi_provider.catalog.sources import PresignedUrls


def test_each_submit_presigns_afresh_and_only_s3_sources(moto_s3, s3_bucket: str) -> None:
    client = moto_s3.client()
    client.put_object(Bucket=s3_bucket, Key="photos/a b.jpg", Body=b"private bytes")
    uri = f"s3://{s3_bucket}/photos/a b.jpg"
    assert httpx.get(f"{moto_s3.endpoint_url}/{s3_bucket}/photos/a%20b.jpg").status_code == 403

    first_submit = PresignedUrls(aws_conn_id="aws_default", expires_in=7200)
    first = first_submit.url_for(uri)
    time.sleep(1.1)  # (signatures carry the signing time, to the second)
    retry = PresignedUrls(aws_conn_id="aws_default", expires_in=7200).url_for(uri)

    assert first != retry, "a resubmission signs a new URL"
    for url in (first, retry):
        answer = httpx.get(url)
        assert answer.status_code == 200 and answer.content == b"private bytes"
    assert first_submit.uri_of == {first: uri}
    assert first_submit.url_for("https://cdn.example.com/x.jpg") == "https://cdn.example.com/x.jpg"


def test_s3_sources_are_fingerprinted_from_object_metadata(moto_s3, s3_bucket: str) -> None:
    client = moto_s3.client()
    client.put_object(Bucket=s3_bucket, Key="a.jpg", Body=b"version one")
    uri, missing = f"s3://{s3_bucket}/a.jpg", f"s3://{s3_bucket}/missing.jpg"

    before = source_fingerprints([uri, missing, uri], aws_conn_id="aws_default")
    client.put_object(Bucket=s3_bucket, Key="a.jpg", Body=b"version two!")
    after = source_fingerprints([uri], aws_conn_id="aws_default")
    hashed = source_fingerprints([uri], aws_conn_id="aws_default", mode="content")

    etag = client.head_object(Bucket=s3_bucket, Key="a.jpg")["ETag"]
    assert before[uri].fingerprint != after[uri].fingerprint
    assert after[uri].fingerprint == f"etag:{etag};size:12" and after[uri].content_length == 12
    assert before[missing].gone and before[missing].fingerprint is None
    assert hashed[uri].fingerprint.startswith("sha256:") and hashed[uri].content_length == 12
