"""LeapiResultToS3Operator when S3 or the temp URLs fail (issue 6).

S3 faults come from a small fault-injecting HTTP proxy in front of moto's real S3 server: it forwards every
request unchanged, except those its plan tells it to answer with a 5xx or to cut off mid-body. The AWS
connection points at the proxy, so the operator, ``S3Hook`` and botocore meet the failures exactly as they
would from a real endpoint.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from airflow.sdk.exceptions import AirflowFailException

from devkit.s3 import MotoS3Server
from devkit.server import RunningServer, running_server, wait_for_pipeline
from devkit.sources import serve_http
from leapi.errors import LeapiResultExpiredError
from leapi_provider.transfers.leapi_to_s3 import LeapiResultToS3Operator

#: botocore's own retries per request (standard mode): enough to ride out two failures, not an outage.
BOTOCORE_MAX_ATTEMPTS = 3
TINY_TTL_S = 5
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


@dataclass
class Seen:
    method: str
    path: str
    query: str
    fault: str | None


@dataclass
class FaultyS3Proxy:
    """Forwards to ``upstream``; ``plan(method, path, query, nth)`` returns ``None`` (forward), an HTTP status
    to answer instead, or ``"drop"`` (read half the body, then close the connection without an answer).
    ``nth`` counts earlier requests with the same method and path (0 for the first)."""

    upstream: str
    plan: Callable[[str, str, str, int], int | str | None] = lambda *_: None
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=self.upstream, timeout=30)

    def requests(self, method: str, path_part: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == method and path_part in s.path]

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and 100-continue, as S3 speaks

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _body(self, limit: int | None = None) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length", "0"))
                return self.rfile.read(length if limit is None else min(limit, length))

            def _handle(self) -> None:
                path, _, query = self.path.partition("?")
                with proxy._lock:
                    nth = sum(1 for s in proxy.seen if s.method == self.command and s.path == path)
                    fault = proxy.plan(self.command, path, query, nth)
                    proxy.seen.append(Seen(self.command, path, query, None if fault is None else str(fault)))
                if fault == "drop":
                    self._body(limit=int(self.headers.get("Content-Length", "0")) // 2)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                body = self._body()
                if fault is not None:
                    code = "SlowDown" if fault == 503 else "InternalError"
                    payload = (
                        f"<Error><Code>{code}</Code><Message>injected by the test</Message></Error>".encode()
                    )
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream = proxy._client.request(self.command, self.path, headers=headers, content=body)
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                # A HEAD answer has no body but states the object's length.
                length = upstream.headers.get("Content-Length", "0") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(upstream.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(upstream.content)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        return Handler


@pytest.fixture
def s3_proxy(moto_s3: MotoS3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyS3Proxy]:
    """A fault-injecting proxy in front of moto, and the AWS connection ``aws_faulty`` pointing at it."""
    proxy = FaultyS3Proxy(moto_s3.endpoint_url)
    with serve_http(proxy.handler()) as proxy.url:
        monkeypatch.setenv(
            "AIRFLOW_CONN_AWS_FAULTY",
            json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {
                        "endpoint_url": proxy.url,
                        "region_name": "us-east-1",
                        "config_kwargs": {
                            "retries": {"mode": "standard", "max_attempts": BOTOCORE_MAX_ATTEMPTS}
                        },
                    },
                }
            ),
        )
        yield proxy


class FakeTI:
    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def done_pipeline(server: RunningServer, urls: list[str], **operation: Any) -> dict:
    with server.client() as client:
        answer = client.post(
            "/v1/pipeline",
            json={
                "source": {"http": {"url": urls}},
                "operations": [{"op": "preset/marketplace", **operation}],
            },
        )
        assert answer.status_code == 200, answer.text
        pipeline = wait_for_pipeline(client, answer.json()["pipeline"]["id"], timeout=120)
    assert pipeline["status"] == "DONE" and not pipeline["errors"], pipeline["errors"]
    return pipeline


def expected_objects(pipeline: dict) -> list[tuple[int, str]]:
    """(bytes, sha256) of each result, straight from its temp URL."""
    out = []
    for result in pipeline["results"]:
        content = httpx.get(result["output_object"]["tmp_url"]).content
        out.append((len(content), hashlib.sha256(content).hexdigest()))
    return out


def stored_objects(moto_s3: MotoS3Server, bucket: str, uris: list[str]) -> list[tuple[int, str]]:
    s3 = moto_s3.client()
    out = []
    for uri in uris:
        content = s3.get_object(Bucket=bucket, Key=uri.split("/", 3)[3])["Body"].read()
        out.append((len(content), hashlib.sha256(content).hexdigest()))
    return out


def to_s3(pipeline_id: int, bucket: str, **kwargs: Any) -> LeapiResultToS3Operator:
    return LeapiResultToS3Operator(
        task_id="to_s3",
        pipeline_id=pipeline_id,
        s3_bucket=bucket,
        s3_key_template="faults/{pipeline_id}/{file_name}",
        aws_conn_id="aws_faulty",
        **kwargs,
    )


def test_s3_failures_mid_upload_are_retried_and_every_object_is_complete(
    leapi_server: RunningServer, leapi_conn: str, source_photos: dict[str, str], moto_s3, s3_bucket, s3_proxy
) -> None:
    """Two 500s on one object's PUT, and a multipart upload whose first part is cut off mid-body: botocore
    retries each, and every object in S3 has the size and sha256 of its result."""
    pipeline = done_pipeline(
        leapi_server,
        [source_photos["cat.jpg"], source_photos["burger.jpg"], source_photos["rocket.jpg"]],
        width=2800,
        height=1900,
        image_format="PNG",
    )
    sizes = [size for size, _ in expected_objects(pipeline)]
    big = max(range(3), key=sizes.__getitem__)
    assert sizes[big] > 5 * 1024 * 1024, "the test needs one result above the multipart threshold"
    small = min(range(3), key=sizes.__getitem__)
    assert sizes[small] < 5 * 1024 * 1024, "the test needs one result uploaded in a single PUT"

    def plan(method: str, path: str, query: str, nth: int) -> int | str | None:
        if method == "PUT" and path.endswith(f"-{small}.png") and "partNumber" not in query and nth < 2:
            return 500
        if method == "PUT" and path.endswith(f"-{big}.png") and "partNumber=1" in query and nth == 0:
            return "drop"
        return None

    s3_proxy.plan = plan
    uris = to_s3(pipeline["id"], s3_bucket, multipart_threshold=5 * 1024 * 1024).execute({"ti": FakeTI()})

    assert stored_objects(moto_s3, s3_bucket, uris) == expected_objects(pipeline)
    faults = [s for s in s3_proxy.seen if s.fault]
    assert sorted(s.fault for s in faults) == ["500", "500", "drop"], faults
    assert len(s3_proxy.requests("PUT", f"-{small}.png")) == 3, "two failures, then the retry that worked"
    first_parts = [s for s in s3_proxy.requests("PUT", f"-{big}.png") if "partNumber=1&" in s.query + "&"]
    assert len(first_parts) == 2, "the cut-off part was sent again"


def test_an_s3_outage_fails_the_task_and_its_retry_rewrites_nothing_that_was_right(
    leapi_server: RunningServer, leapi_conn: str, source_photos: dict[str, str], moto_s3, s3_bucket, s3_proxy
) -> None:
    pipeline = done_pipeline(
        leapi_server,
        [source_photos["cat.jpg"], source_photos["burger.jpg"], source_photos["rocket.jpg"]],
        width=300,
    )
    outage = {"on": False}

    def plan(method: str, path: str, query: str, nth: int) -> int | None:
        # S3 goes down right after the first object is stored, for longer than botocore keeps retrying.
        if outage["on"]:
            return 503
        if method == "PUT" and path.endswith("-0.jpg"):
            outage["on"] = True
        return None

    s3_proxy.plan = plan
    with pytest.raises(Exception) as failure:
        to_s3(pipeline["id"], s3_bucket).execute({"ti": FakeTI()})
    assert "503" in str(failure.value) or "SlowDown" in str(failure.value), failure.value
    s3 = moto_s3.client()
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert len(listed) == 1 and listed[0].endswith("-0.jpg"), "only the object stored before the outage"
    first_written = s3.head_object(Bucket=s3_bucket, Key=listed[0])["LastModified"]

    # The outage ends; Airflow retries the task (a fresh operator, same arguments).
    outage["on"] = False
    s3_proxy.plan = lambda *_: None
    s3_proxy.seen.clear()
    time.sleep(1.1)  # S3 timestamps have one-second resolution: a rewrite would show
    uris = to_s3(pipeline["id"], s3_bucket).execute({"ti": FakeTI()})

    assert stored_objects(moto_s3, s3_bucket, uris) == expected_objects(pipeline)
    assert s3_proxy.requests("PUT", "-0.jpg") == [], "the complete object from the first try is not rewritten"
    assert s3.head_object(Bucket=s3_bucket, Key=listed[0])["LastModified"] == first_written
    assert len(s3_proxy.requests("PUT", "-1.jpg")) == 1 and len(s3_proxy.requests("PUT", "-2.jpg")) == 1


def test_expired_temp_urls_fail_clearly_and_rerunning_the_image_recovers(
    source_photos: dict[str, str], leapi_conn_factory, moto_s3, s3_bucket, aws_conn
) -> None:
    """The transfer runs after the temp URLs expired (a tiny ``--temp-url-ttl``): it fails naming the pipeline and
    the expiry and writes nothing; the documented recovery (re-run the image: a new pipeline) works."""
    # 5 s: long enough for the recovery's transfer to finish in time on a loaded machine.
    with running_server(extra_args=("--workers", "1", "--temp-url-ttl", str(TINY_TTL_S))) as server:
        conn_id = leapi_conn_factory("leapi_tiny_ttl", server.base_url, server.api_key)
        stale = done_pipeline(server, [source_photos["cat.jpg"]], width=200)
        time.sleep(TINY_TTL_S + 1.1)
        transfer = LeapiResultToS3Operator(
            task_id="to_s3", pipeline_id=stale["id"], s3_bucket=s3_bucket, leapi_conn_id=conn_id
        )
        with pytest.raises(AirflowFailException) as failed:  # no retry can fix it: fails at once
            transfer.execute({"ti": FakeTI()})
        expired = failed.value.__cause__
        assert isinstance(expired, LeapiResultExpiredError)
        assert moto_s3.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0

        fresh = done_pipeline(server, [source_photos["cat.jpg"]], width=200)
        uris = LeapiResultToS3Operator(
            task_id="to_s3", pipeline_id=fresh["id"], s3_bucket=s3_bucket, leapi_conn_id=conn_id
        ).execute({"ti": FakeTI()})
        assert stored_objects(moto_s3, s3_bucket, uris) == expected_objects(fresh)

    message = str(failed.value)
    assert f"pipeline {stale['id']}" in message and "expired at 20" in message
    assert "re-run the image" in message and "signature=" not in message
    assert expired.pipeline_id == stale["id"]
