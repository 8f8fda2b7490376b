"""The client's retry, rate-limit and idempotency rules, driven by answers a real server does not give on
demand (respx): 503 storms, timeouts after the body was sent, dropped connections, rate-limit storms,
a proxy's HTML page. ``test_client.py`` runs the same client against a real ``leapi-server``."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx

import leapi
from leapi.constants import IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_SUPPORT_HEADER, RATE_LIMIT_REASON
from leapi.errors import (
    LeapiAuthError,
    LeapiHTTPError,
    LeapiNotFoundError,
    LeapiRateLimitError,
    LeapiRejectedError,
    LeapiResponseError,
    LeapiSubmitUncertainError,
)
from leapi.idempotency import ADVERTISED, derive_idempotency_key
from leapi.models import PipelineRequest, PipelineStatus
from leapi.redaction import RedactSignedUrlsFilter
from leapi.transport import (
    RetryPolicy,
    SlidingWindowRateLimiter,
    normalize_base_url,
    retry_after_seconds,
    shared_tls_context,
)

BASE = "https://leapi.test"
KEY = "unit-secret-key-123"
REQUEST = PipelineRequest.build("https://img.test/a.jpg", [{"op": "preset/marketplace", "width": 100}])
SUPPORTED = {IDEMPOTENCY_SUPPORT_HEADER: "supported"}
REJECTED_RATE_LIMIT = {"status": "REJECTED", "reason": RATE_LIMIT_REASON}


def accepted(pipeline_id: int = 7) -> dict:
    return {"status": "ACCEPTED", "pipeline": {"id": pipeline_id, "status": "PROCESSING"}}


def pipeline_body(pipeline_id: int, status: str = "DONE") -> dict:
    return {"pipeline": {"id": pipeline_id, "status": status, "results": [], "errors": []}}


def client(**overrides) -> leapi.Client:
    settings = {"api_key": KEY, "base_url": BASE, "max_retries": 3, "backoff_base": 0.01} | overrides
    return leapi.Client(**settings)


# -- submit -----------------------------------------------------------------------------------------


@respx.mock
def test_submit_sends_the_documented_body_the_key_and_the_idempotency_key(slept):
    route = respx.post(f"{BASE}/v1/pipeline").respond(200, json=accepted(26082838))
    with client() as leapi_client:
        pipeline = leapi_client.submit(REQUEST, idempotency_key="abc")
    assert pipeline.id == 26082838 and pipeline.status is PipelineStatus.PROCESSING
    sent = route.calls.last.request
    assert sent.headers["X-API-KEY"] == KEY
    assert sent.headers[IDEMPOTENCY_KEY_HEADER] == "abc"
    assert sent.headers["User-Agent"].startswith("leapi-python/")
    assert json.loads(sent.content) == {
        "source": {"http": {"url": "https://img.test/a.jpg"}},
        "operations": [{"op": "preset/marketplace", "width": 100}],
        "sink": {"temp_store": True},
    }
    assert slept == []


@respx.mock
def test_rate_limited_submit_honours_retry_after_then_succeeds(slept, caplog):
    route = respx.post(f"{BASE}/v1/pipeline")
    route.side_effect = [
        httpx.Response(429, json=REJECTED_RATE_LIMIT, headers={"Retry-After": "7"}),
        httpx.Response(200, json=REJECTED_RATE_LIMIT),  # the docs' form: REJECTED whatever the status
        httpx.Response(200, json=accepted(5)),
    ]
    with caplog.at_level(logging.WARNING, logger="leapi"):
        assert client().submit(REQUEST).id == 5
    assert route.call_count == 3
    assert 7.0 <= slept[0] <= 8.0
    backoffs = [r.getMessage() for r in caplog.records if "backoff" in r.getMessage()]
    assert [line.split(": ", 1)[1].split(";")[0] for line in backoffs] == [
        "rate limited (HTTP 429)",
        "rate limited (REJECTED)",
    ]
    keys = {call.request.headers[IDEMPOTENCY_KEY_HEADER] for call in route.calls}
    assert len(keys) == 1, "every attempt of one submit must carry the same Idempotency-Key"


@respx.mock
def test_a_rate_limit_storm_ends_in_a_retryable_rate_limit_error(slept):
    route = respx.post(f"{BASE}/v1/pipeline").respond(
        200, json=REJECTED_RATE_LIMIT, headers={"RateLimit-Reset": "3"}
    )
    # Retried for the time budget, whatever max_retries says: three 3-3.35 s waits spend 9 s.
    with pytest.raises(LeapiRateLimitError, match="rate limited on all 4 attempts within the 9s") as info:
        client(rate_limit_budget=9, max_retries=1).submit(REQUEST)
    assert route.call_count == 4
    assert info.value.rate_limited and info.value.reason == RATE_LIMIT_REASON
    assert info.value.retry_after == 3 and info.value.status_code == 200
    assert isinstance(info.value, LeapiRejectedError)
    assert all(3.0 <= delay <= 4.0 for delay in slept), "RateLimit-Reset is honoured on every retry"


@respx.mock
def test_other_rejection_is_not_retried_and_carries_the_reason(slept):
    route = respx.post(f"{BASE}/v1/pipeline").respond(
        400, json={"status": "REJECTED", "reason": "operations.0.width: must be >= 1"}
    )
    with pytest.raises(LeapiRejectedError, match=r"operations\.0\.width") as info:
        client().submit(REQUEST)
    assert info.value.reason == "operations.0.width: must be >= 1" and not info.value.rate_limited
    assert info.value.status_code == 400
    assert route.call_count == 1 and slept == []


@respx.mock
def test_a_rejected_body_on_a_5xx_is_retried_even_for_a_submit(slept):
    # The documented refusal means nothing was taken, so repeating cannot charge twice.
    route = respx.post(f"{BASE}/v1/pipeline")
    route.side_effect = [
        httpx.Response(503, json={"status": "REJECTED", "reason": "Service is restarting"}),
        httpx.Response(200, json=accepted(4)),
    ]
    assert client(idempotency="never").submit(REQUEST).id == 4
    assert route.call_count == 2


@respx.mock
def test_connect_errors_on_submit_are_retried_because_nothing_was_sent(slept):
    route = respx.post(f"{BASE}/v1/pipeline")
    route.side_effect = [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow"),
        httpx.Response(200, json=accepted(9)),
    ]
    assert client(idempotency="never").submit(REQUEST).id == 9
    assert route.call_count == 3


@respx.mock
def test_ambiguous_submit_failure_without_idempotency_support_is_not_repeated(slept):
    post = respx.post(f"{BASE}/v1/pipeline")
    post.side_effect = httpx.ReadTimeout("no answer")
    probe = respx.get(f"{BASE}/v1/me/usage/").respond(200, json={"used": 0})
    with pytest.raises(LeapiSubmitUncertainError, match="may have been created") as info:
        client().submit(REQUEST, idempotency_key="k-1")
    assert info.value.idempotency_key == "k-1"
    assert post.call_count == 1, "a second POST could create (and charge) a second pipeline"
    assert probe.call_count == 1, "one cheap GET to learn whether the server dedupes"


@respx.mock
def test_ambiguous_submit_failures_are_retried_with_the_same_key_when_the_server_dedupes(slept):
    respx.get(f"{BASE}/v1/me/usage/").respond(200, json={"used": 0}, headers=SUPPORTED)
    post = respx.post(f"{BASE}/v1/pipeline")
    post.side_effect = [
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(200, json=accepted(11), headers=SUPPORTED),
    ]
    assert client().submit(REQUEST, idempotency_key="k-2").id == 11
    assert [c.request.headers[IDEMPOTENCY_KEY_HEADER] for c in post.calls] == ["k-2"] * 3
    assert ADVERTISED.get(BASE) is True


@respx.mock
def test_an_advertisement_seen_earlier_spares_the_probe(slept):
    probe = respx.get(f"{BASE}/v1/me/usage/").respond(200, json={"used": 0})
    respx.get(f"{BASE}/v1/pipeline/1").respond(200, json=pipeline_body(1), headers=SUPPORTED)
    post = respx.post(f"{BASE}/v1/pipeline")
    post.side_effect = [httpx.ReadTimeout("lost"), httpx.Response(200, json=accepted(12))]
    with client() as first:
        first.get_pipeline(1)  # any answer of that base URL tells
    with client() as second:  # another client of the same process
        assert second.submit(REQUEST).id == 12
    assert probe.call_count == 0


@respx.mock
def test_a_submit_answered_by_something_else_than_leapi_is_ambiguous(slept):
    post = respx.post(f"{BASE}/v1/pipeline").respond(200, text="<html>proxy says hi</html>")
    respx.get(f"{BASE}/v1/me/usage/").respond(200, json={})
    with pytest.raises(LeapiSubmitUncertainError, match="not LEAPI's"):
        client().submit(REQUEST)
    assert post.call_count == 1


@respx.mock
def test_idempotency_never_sends_no_key_and_never_repeats_ambiguous_failures(slept):
    post = respx.post(f"{BASE}/v1/pipeline").respond(500, text="boom")
    with pytest.raises(LeapiSubmitUncertainError) as info:
        client(idempotency="never").submit(REQUEST)
    assert post.call_count == 1 and info.value.idempotency_key is None
    assert IDEMPOTENCY_KEY_HEADER not in post.calls.last.request.headers


@respx.mock
def test_idempotency_always_repeats_ambiguous_failures_without_asking(slept):
    post = respx.post(f"{BASE}/v1/pipeline")
    post.side_effect = [httpx.ReadTimeout("t"), httpx.Response(200, json=accepted(3))]
    probe = respx.get(f"{BASE}/v1/me/usage/").respond(200, json={})
    assert client(idempotency=leapi.IdempotencyMode.ALWAYS).submit(REQUEST).id == 3
    assert probe.call_count == 0


@respx.mock
def test_ambiguous_failures_that_outlast_the_retries_are_uncertain_not_http_errors(slept):
    post = respx.post(f"{BASE}/v1/pipeline").respond(503)
    with pytest.raises(LeapiSubmitUncertainError, match="after 4 attempt"):
        client(idempotency="always").submit(REQUEST)
    assert post.call_count == 4


def test_derived_idempotency_keys_are_stable_per_job_and_request():
    other = PipelineRequest.build("https://img.test/b.jpg", [{"op": "preset/print"}])
    key = derive_idempotency_key(REQUEST, "dag", "task", "run", -1)
    assert key == derive_idempotency_key(REQUEST, "dag", "task", "run", -1)
    assert key != derive_idempotency_key(REQUEST, "dag", "task", "run", 0)
    assert key != derive_idempotency_key(other, "dag", "task", "run", -1)
    assert key.startswith("leapi-") and len(key) <= 255


# -- reads ------------------------------------------------------------------------------------------


@respx.mock
def test_get_pipeline_rides_out_a_503_storm_with_logged_exponential_backoff(slept, caplog):
    route = respx.get(f"{BASE}/v1/pipeline/42")
    route.side_effect = [
        httpx.Response(503),
        httpx.Response(503),
        httpx.ReadTimeout("t"),
        httpx.Response(200, json=pipeline_body(42)),
    ]
    with caplog.at_level(logging.WARNING, logger="leapi"):
        pipeline = client().get_pipeline(42)
    assert pipeline.status is PipelineStatus.DONE and route.call_count == 4
    backoffs = [r.getMessage() for r in caplog.records if "backoff" in r.getMessage()]
    assert len(backoffs) == 3 and "HTTP 503" in backoffs[0] and "retry 1/3" in backoffs[0]
    # Ceilings 0.01, 0.02, 0.04; equal jitter keeps each between half of it and all of it.
    for delay, ceiling in zip(slept, (0.01, 0.02, 0.04), strict=True):
        assert ceiling / 2 <= delay <= ceiling


@respx.mock
def test_reads_answered_by_something_else_than_leapi_are_retried(slept):
    route = respx.get(f"{BASE}/v1/pipeline/2")
    route.side_effect = [httpx.Response(200, text="<html>"), httpx.Response(200, json=pipeline_body(2))]
    assert client().get_pipeline(2).id == 2


@respx.mock
def test_a_json_answer_of_the_wrong_shape_is_a_response_error(slept):
    respx.get(f"{BASE}/v1/pipeline/3").respond(200, json={"pipeline": {"status": "DONE"}})
    with pytest.raises(LeapiResponseError, match="PipelineEnvelope"):
        client().get_pipeline(3)


@respx.mock
def test_retries_run_out(slept):
    route = respx.get(f"{BASE}/v1/pipeline/1").respond(500)
    with pytest.raises(LeapiHTTPError, match="after 4 attempts") as info:
        client().get_pipeline(1)
    assert route.call_count == 4 and info.value.status_code == 500


@respx.mock
def test_auth_and_not_found_errors_are_not_retried(slept):
    respx.get(f"{BASE}/v1/pipeline/1").respond(401, json={"status": "REJECTED", "reason": "invalid API key"})
    respx.get(f"{BASE}/v1/pipeline/2").respond(404, json={"status": "REJECTED", "reason": "not found"})
    with client() as leapi_client:
        with pytest.raises(LeapiAuthError, match="API key") as auth:
            leapi_client.get_pipeline(1)
        with pytest.raises(LeapiNotFoundError):
            leapi_client.get_pipeline(2)
    assert auth.value.status_code == 401 and KEY not in str(auth.value)
    assert respx.calls.call_count == 2 and slept == []


def test_a_misconfigured_url_is_reported_at_once():
    with pytest.raises(LeapiHTTPError, match="UnsupportedProtocol"):
        leapi.Client(api_key=KEY, base_url="ftp://leapi.test").get_usage()


@respx.mock
async def test_the_async_client_follows_the_same_rules(slept):
    route = respx.get(f"{BASE}/v1/pipeline/8")
    route.side_effect = [
        httpx.Response(503, headers={"Retry-After": "2"}),
        httpx.Response(200, json=pipeline_body(8, "PROCESSING")),
    ]
    post = respx.post(f"{BASE}/v1/pipeline")
    post.side_effect = httpx.ReadTimeout("lost")
    respx.get(f"{BASE}/v1/me/usage/").respond(200, json={})
    async with leapi.AsyncClient(api_key=KEY, base_url=BASE, max_retries=3) as leapi_client:
        assert (await leapi_client.get_pipeline(8)).status is PipelineStatus.PROCESSING
        with pytest.raises(LeapiSubmitUncertainError):
            await leapi_client.submit(REQUEST)
    assert 2.0 <= slept[0] <= 2.3
    assert post.call_count == 1


# -- pieces ---------------------------------------------------------------------------------------------


def test_retry_after_forms():
    future = datetime.now(UTC) + timedelta(seconds=30)
    assert retry_after_seconds(httpx.Headers({"Retry-After": "12"})) == 12
    in_seconds = retry_after_seconds(httpx.Headers({"Retry-After": format_datetime(future, usegmt=True)}))
    assert in_seconds is not None and 25 < in_seconds <= 30
    assert retry_after_seconds(httpx.Headers({"RateLimit-Reset": "4"})) == 4
    epoch = retry_after_seconds(httpx.Headers({"X-RateLimit-Reset": str(int(future.timestamp()))}))
    assert epoch is not None and 25 < epoch <= 30
    assert retry_after_seconds(httpx.Headers({})) is None


def test_a_retry_after_beyond_the_cap_is_capped():
    assert 300 <= RetryPolicy().delay(0, retry_after=86_400) <= 301


def test_rate_limiter_allows_per_minute_then_spaces_requests():
    limiter = SlidingWindowRateLimiter(2)
    waits = [limiter.reserve() for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]
    assert 59 < waits[2] <= 60 and 59 < waits[3] <= 60 and 119 < waits[4] <= 120


@respx.mock
def test_the_client_side_rate_limit_delays_requests(slept):
    respx.get(f"{BASE}/v1/me/usage/").respond(200, json={})
    with client(rate_limit_per_minute=2) as leapi_client:
        for _ in range(3):
            leapi_client.get_usage()
    assert len(slept) == 1 and slept[0] > 59


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, "https://api.letsenhance.io"),
        ("api.letsenhance.io", "https://api.letsenhance.io"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("https://api.letsenhance.io/v1/pipeline/", "https://api.letsenhance.io"),
        ("https://proxy.example/leapi/v1/pipeline", "https://proxy.example/leapi"),
    ],
)
def test_base_url_normalization(host, expected):
    assert normalize_base_url(host) == expected


def test_the_api_key_comes_from_the_environment_or_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LEAPI_API_KEY", "from-env")
    monkeypatch.setenv("LEAPI_BASE_URL", "http://127.0.0.1:9/v1/pipeline/")
    with leapi.Client() as from_env:
        assert from_env._api_key == "from-env" and from_env.base_url == "http://127.0.0.1:9"
        assert "from-env" not in repr(from_env)
    monkeypatch.delenv("LEAPI_API_KEY")
    with pytest.raises(ValueError, match="LEAPI_API_KEY"):
        leapi.Client()


def test_httpx_request_logs_lose_signed_query_strings():
    signed = "https://s3.test/tmp/p/1/out.jpg?X-Amz-Signature=deadbeef&X-Amz-Expires=86400"
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        'HTTP Request: %s %s "%s %d %s"',
        ("GET", httpx.URL(signed), "HTTP/1.1", 200, "OK"),
        None,
    )
    RedactSignedUrlsFilter().filter(record)
    message = record.getMessage()
    assert "deadbeef" not in message and "https://s3.test/tmp/p/1/out.jpg?<redacted>" in message
    client().close()  # building a client installs the filter
    assert any(isinstance(f, RedactSignedUrlsFilter) for f in logging.getLogger("httpx").filters)


async def test_every_client_shares_one_tls_context():
    # A fresh context per client costs ~50 ms of CPU; a triggerer with many triggers would stall on it.
    sync_client = client()
    async_client = leapi.AsyncClient(api_key=KEY, base_url=BASE)
    pools = [
        sync_client._http._transport._pool,  # httpcore's pool holds the context it was given
        sync_client._downloads._transport._pool,
        async_client._http._transport._pool,
    ]
    assert {id(pool._ssl_context) for pool in pools} == {id(shared_tls_context())}
    sync_client.close()
    await async_client.aclose()
