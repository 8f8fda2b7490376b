"""Private-bucket sources against moto's S3 server (which refuses unsigned reads): presigned URLs that
read the object, signed afresh on every submit, and fingerprints from object metadata: listed per key
range where the manifest names enough of it, else asked key by key (requests counted in moto's log)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from leapi_provider.catalog import s3_fingerprints
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


def _served(moto_s3, since: int) -> Counter[str]:
    """Requests moto's server logged after line ``since``, by kind (``ListObjectsV2``, ``HeadObject``)."""
    kinds: Counter[str] = Counter()
    for line in moto_s3.log_path.read_text().splitlines()[since:]:
        # (werkzeug colours the request line of an error answer: match inside the escape codes)
        if "GET /" in line and "list-type=2" in line:
            kinds["ListObjectsV2"] += 1
        elif "HEAD /" in line:
            kinds["HeadObject"] += 1
    return kinds


def _log_lines(moto_s3) -> int:
    return len(moto_s3.log_path.read_text().splitlines())


def _put(client, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=key.encode()), keys))


def test_a_folder_is_listed_not_asked_key_by_key(moto_s3, s3_bucket: str) -> None:
    client = moto_s3.client()
    keys = [f"catalog/sku-{i:03d}.jpg" for i in range(40)]
    _put(client, s3_bucket, [*keys, "catalog/not-in-the-manifest.jpg", "elsewhere/other.jpg"])
    uris = [f"s3://{s3_bucket}/{key}" for key in keys] + [f"s3://{s3_bucket}/catalog/sku-missing.jpg"]

    since = _log_lines(moto_s3)
    before = source_fingerprints(uris, aws_conn_id="aws_default")
    assert _served(moto_s3, since) == {"ListObjectsV2": 1}
    assert before.stats.s3_prefixes_listed == 1 and before.stats.requests == {"ListObjectsV2": 1}
    # The same fingerprint HeadObject gave before listing existed: stored results still match.
    head = client.head_object(Bucket=s3_bucket, Key=keys[7])
    assert before[uris[7]].fingerprint == f"etag:{head['ETag']};size:{head['ContentLength']}"
    assert before[uris[7]].content_length == len(keys[7])
    missing = before[uris[-1]]
    assert missing.gone and missing.fingerprint is None and missing.error.startswith("S3 404")

    client.put_object(Bucket=s3_bucket, Key=keys[3], Body=b"a new photograph")
    client.delete_object(Bucket=s3_bucket, Key=keys[39])
    after = source_fingerprints(uris, aws_conn_id="aws_default")
    changed = {uri for uri in uris[:-1] if after[uri].fingerprint != before[uri].fingerprint}
    assert changed == {uris[3], uris[39]}
    assert after[uris[3]].content_length == len(b"a new photograph")
    assert after[uris[39]].gone and after[uris[39]].fingerprint is None


def test_one_key_per_folder_is_listed_too(moto_s3, s3_bucket: str) -> None:
    keys = [f"shop/sku-{i:02d}/main.jpg" for i in range(20)]
    _put(moto_s3.client(), s3_bucket, [*keys, "shop/sku-05/zoom.jpg"])
    since = _log_lines(moto_s3)
    found = source_fingerprints([f"s3://{s3_bucket}/{key}" for key in keys], aws_conn_id="aws_default")
    assert _served(moto_s3, since) == {"ListObjectsV2": 1}
    assert all(
        f.fingerprint and f.content_length == len(key) for f, key in zip(found.values(), keys, strict=True)
    )


def test_ranges_are_listed_apart_and_stop_at_their_last_key(moto_s3, s3_bucket: str, monkeypatch) -> None:
    monkeypatch.setattr(s3_fingerprints, "LIST_PAGE_SIZE", 10)
    monkeypatch.setattr(s3_fingerprints, "KEYS_PER_RANGE", 20)
    keys = [f"photos/{i:02d}.jpg" for i in range(50)]
    _put(moto_s3.client(), s3_bucket, keys)
    named = keys[:40]  # ranges 0-19 and 20-39, 2 full pages each (objects 40-49 follow)

    since = _log_lines(moto_s3)
    found = source_fingerprints([f"s3://{s3_bucket}/{key}" for key in named], aws_conn_id="aws_default")
    assert _served(moto_s3, since) == {"ListObjectsV2": 4} == found.stats.requests
    assert found.stats.s3_prefixes_listed == 2 and found.stats.s3_listed_sources == 40
    assert all(f.fingerprint and not f.gone for f in found.values())


def test_a_sparse_prefix_is_asked_key_by_key(moto_s3, s3_bucket: str, monkeypatch) -> None:
    monkeypatch.setattr(s3_fingerprints, "LIST_PAGE_SIZE", 100)  # (3 pages of objects, not 3,000)
    client = moto_s3.client()
    keys = [f"feed/{i:04d}.jpg" for i in range(300)]
    _put(client, s3_bucket, keys)
    named = keys[::30]  # 10 named keys among 300: one page resolves 4 of them

    since = _log_lines(moto_s3)
    found = source_fingerprints([f"s3://{s3_bucket}/{key}" for key in named], aws_conn_id="aws_default")
    assert _served(moto_s3, since) == {"ListObjectsV2": 1, "HeadObject": 6}
    assert all(f.fingerprint and f.fingerprint.startswith("etag:") for f in found.values())
    assert found.stats.s3_listed_sources == 4


def test_a_bucket_that_cannot_be_listed_is_asked_key_by_key(moto_s3, aws_conn: str) -> None:
    uris = [f"s3://no-such-bucket-here/photos/{i}.jpg" for i in range(12)]
    since = _log_lines(moto_s3)
    found = source_fingerprints(uris, aws_conn_id=aws_conn)
    assert _served(moto_s3, since) == {"ListObjectsV2": 1, "HeadObject": 12} == found.stats.requests
    assert all(f.gone and f.fingerprint is None for f in found.values())
