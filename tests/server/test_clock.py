"""Time-driven rules of ``leapi-server`` on a fake clock: temp URL expiry (24 h), idempotency keys (24 h),
the rate-limit window (1 min) and webhook retries (3, 6, 10 min), at their documented values, without
waiting for them. The server runs in-process (``in_process_server``) with real worker processes."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from devkit.s3 import MotoS3Server
from devkit.server import (
    QUICK_START_OPERATION,
    FakeClock,
    InProcessServer,
    in_process_server,
    wait_for_pipeline,
)
from devkit.sources import serve_http
from leapi_server.config import (
    DEFAULT_IDEMPOTENCY_TTL_S,
    DEFAULT_TEMP_URL_TTL_S,
    DEFAULT_WEBHOOK_RETRY_DELAYS_S,
)


def body(url: str, **extra: object) -> dict:
    return {
        "source": {"http": {"url": url}},
        "operations": [{**QUICK_START_OPERATION, "width": 120, "height": 80}],
        "sink": {"temp_store": True},
        **extra,
    }


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def used(client: httpx.Client) -> int:
    return client.get("/v1/me/usage/").json()["used"]


#: The clocks start mid-month, so that a day's move never crosses into the next quota period.
MID_MONTH = datetime(2026, 6, 10, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def server() -> Iterator[InProcessServer]:
    """Documented defaults (temp URL lifetime, idempotency, webhook retries), no rate limit or quota."""
    with in_process_server(
        clock=FakeClock(start=MID_MONTH), rate_limit_per_minute=0, monthly_quota=0
    ) as running:
        yield running


def wait_for_all(client: httpx.Client, answers: list[httpx.Response]) -> None:
    """Let accepted pipelines finish, so that none is in flight when the server stops."""
    for answer in answers:
        if answer.status_code == 200:
            wait_for_pipeline(client, answer.json()["pipeline"]["id"])


@pytest.mark.sqlite_only(
    "the file store's own signed URL and file; with S3: test_expired_output_leaves_the_bucket"
)
def test_temp_url_expires_after_24_hours_and_its_file_is_collected(
    server: InProcessServer, source_photos: dict[str, str]
) -> None:
    assert DEFAULT_TEMP_URL_TTL_S == 24 * 60 * 60  # the docs: "we store it for 24 hours once it's done"
    with server.client() as client:
        response = client.post("/v1/pipeline", json=body(source_photos["burger.jpg"]))
        pipeline = wait_for_pipeline(client, response.json()["pipeline"]["id"])
    output = pipeline["results"][0]["output_object"]
    stored = server.data_dir / "tmp" / output["s3_key"]
    expires = int(parse_qs(urlsplit(output["tmp_url"]).query)["expires"][0])
    assert expires == int(server.clock()) + DEFAULT_TEMP_URL_TTL_S

    server.advance(DEFAULT_TEMP_URL_TTL_S - 1)
    still_valid = httpx.get(output["tmp_url"])
    assert still_valid.status_code == 200 and still_valid.headers["cache-control"] == "private, max-age=1"
    assert stored.is_file()

    server.advance(2)
    response = httpx.get(output["tmp_url"])
    assert response.status_code == 403
    assert response.json()["status"] == "REJECTED" and "expired" in response.json()["reason"]
    wait_until(lambda: not stored.exists(), timeout=10)


@pytest.mark.postgres_only("the S3 temp store's sweep")
def test_expired_output_leaves_the_bucket(
    server: InProcessServer, source_photos: dict[str, str], moto_s3: MotoS3Server
) -> None:
    """With S3, the presigned URL expires by S3's own clock; the server's sweep deletes the object once the
    output's 24 hours are over by the server's clock."""
    with server.client() as client:
        response = client.post("/v1/pipeline", json=body(source_photos["burger.jpg"]))
        pipeline = wait_for_pipeline(client, response.json()["pipeline"]["id"])
    output = pipeline["results"][0]["output_object"]
    bucket, key = output["s3_bucket"], output["s3_key_prefix"] + output["s3_key"]
    s3 = moto_s3.client()

    def stored() -> bool:
        return s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 1

    assert stored() and "X-Amz-Expires=86400" in output["tmp_url"]
    server.advance(DEFAULT_TEMP_URL_TTL_S - 1)
    time.sleep(1.0)  # a sweep ran (wake) and kept it
    assert stored()
    server.advance(2)
    wait_until(lambda: not stored(), timeout=10)


def test_idempotency_key_is_remembered_for_24_hours(
    server: InProcessServer, source_photos: dict[str, str]
) -> None:
    payload = body(source_photos["cat.jpg"])
    key = {"Idempotency-Key": "order-7"}
    with server.client() as client:
        first = client.post("/v1/pipeline", json=payload, headers=key)
        assert first.status_code == 200

        server.advance(DEFAULT_IDEMPOTENCY_TTL_S - 1)
        replay = client.post("/v1/pipeline", json=payload, headers=key)
        assert replay.status_code == 200 and replay.headers.get("Idempotent-Replayed") == "true"
        assert replay.json()["pipeline"]["id"] == first.json()["pipeline"]["id"]
        assert (
            client.post("/v1/pipeline", json=body(source_photos["burger.jpg"]), headers=key).status_code
            == 422
        )
        assert used(client) == 1

        server.advance(2)
        fresh = client.post("/v1/pipeline", json=payload, headers=key)
        assert fresh.status_code == 200 and "Idempotent-Replayed" not in fresh.headers
        assert fresh.json()["pipeline"]["id"] != first.json()["pipeline"]["id"]
        assert used(client) == 2  # a new pipeline, a new credit
        wait_for_all(client, [first, fresh])


def test_rate_limit_window_slides_with_the_clock(source_photos: dict[str, str]) -> None:
    clock = FakeClock(start=MID_MONTH)
    with (
        in_process_server(clock=clock, rate_limit_per_minute=2, monthly_quota=0) as server,
        server.client() as client,
    ):
        payload = body(source_photos["cat.jpg"])
        answers = [client.post("/v1/pipeline", json=payload) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200]
        limited = client.post("/v1/pipeline", json=payload)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "60"

        server.advance(45)
        limited = client.post("/v1/pipeline", json=payload)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "15"

        server.advance(15)  # the first two leave the window together
        answers += [client.post("/v1/pipeline", json=payload) for _ in range(3)]
        assert [a.status_code for a in answers[2:]] == [200, 200, 429]
        assert used(client) == 4
        wait_for_all(client, answers)


def test_monthly_quota_renews_with_the_calendar_month_utc(source_photos: dict[str, str]) -> None:
    clock = FakeClock(start=datetime(2026, 6, 30, 23, 59, tzinfo=UTC).timestamp())
    with (
        in_process_server(clock=clock, rate_limit_per_minute=0, monthly_quota=1) as server,
        server.client() as client,
    ):
        payload = body(source_photos["cat.jpg"])
        june = client.post("/v1/pipeline", json=payload)
        assert june.status_code == 200
        over = client.post("/v1/pipeline", json=payload)
        assert over.status_code == 402
        assert over.json()["reason"].endswith("0 of 1 remain until 2026-07-01T00:00:00Z.")

        server.advance(60)
        july = client.post("/v1/pipeline", json=payload)
        assert july.status_code == 200
        usage = client.get("/v1/me/usage/").json()
        assert (usage["used"], usage["remaining"], usage["period_start"]) == (
            1,
            0,
            "2026-07-01T00:00:00.000000",
        )
        wait_for_all(client, [june, july])


@contextlib.contextmanager
def failing_receiver() -> Iterator[tuple[str, list[float]]]:
    """A webhook receiver answering 500 to every POST; yields its URL and the times it was called."""
    calls: list[float] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            calls.append(time.monotonic())
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serve_http(Receiver) as url:
        yield f"{url}/hooks/leapi", calls


def _seconds_between(first: str, second: str) -> float:
    return (datetime.fromisoformat(second) - datetime.fromisoformat(first)).total_seconds()


def test_webhook_retries_after_3_6_and_10_minutes_then_stop(
    server: InProcessServer, source_photos: dict[str, str]
) -> None:
    assert DEFAULT_WEBHOOK_RETRY_DELAYS_S == (180.0, 360.0, 600.0)  # the docs' retry logic
    with failing_receiver() as (notify_url, calls), server.client() as client:
        response = client.post("/v1/pipeline", json=body(source_photos["cat.jpg"], notify_url=notify_url))
        pipeline_id = response.json()["pipeline"]["id"]
        wait_for_pipeline(client, pipeline_id)
        wait_until(lambda: len(calls) == 1)
        for attempt, delay in enumerate(DEFAULT_WEBHOOK_RETRY_DELAYS_S, start=2):
            server.advance(delay - 1)
            time.sleep(0.5)  # the sender was woken: give a wrong early retry the chance to show
            assert len(calls) == attempt - 1, f"attempt {attempt} came before its {delay:g} s delay"
            server.advance(1)
            wait_until(lambda attempt=attempt: len(calls) == attempt)
        server.advance(24 * 60 * 60)
        time.sleep(0.5)
        assert len(calls) == 1 + len(DEFAULT_WEBHOOK_RETRY_DELAYS_S)

        (delivery,) = client.get(f"/v1/pipeline/{pipeline_id}/webhooks").json()["deliveries"]
    assert delivery["state"] == "FAILED" and len(delivery["attempts"]) == 4
    assert delivery["next_attempt_at"] is None
    started = [a["started_at"] for a in delivery["attempts"]]
    gaps = [_seconds_between(a, b) for a, b in itertools.pairwise(started)]
    assert gaps == list(DEFAULT_WEBHOOK_RETRY_DELAYS_S)
