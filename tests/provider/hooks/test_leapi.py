"""LeapiHook unit tests: transport, retry and idempotency rules (respx stands in for failures a real server
cannot be made to produce on demand: 503 storms, timeouts after the body was sent, dropped connections)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx

from leapi.constants import RATE_LIMIT_REASON
from leapi.models import PipelineRequest, PipelineStatus
from leapi_provider.exceptions import (
    LeapiAuthError,
    LeapiHTTPError,
    LeapiNotFoundError,
    LeapiRejectedError,
    LeapiSubmitUncertainError,
)
from leapi_provider.hooks.leapi import (
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_SUPPORT_HEADER,
    LeapiHook,
    RedactSignedUrlsFilter,
    SlidingWindowRateLimiter,
    derive_idempotency_key,
    normalize_base_url,
    retry_after_seconds,
    shared_tls_context,
)

BASE = "https://leapi.test"
KEY = "unit-secret-key-123"
REQUEST = PipelineRequest.build("https://img.test/a.jpg", [{"op": "preset/marketplace", "width": 100}])


def accepted(pipeline_id: int = 7) -> dict:
    return {"status": "ACCEPTED", "pipeline": {"id": pipeline_id, "status": "PROCESSING"}}


def pipeline_body(pipeline_id: int, status: str = "DONE") -> dict:
    return {"pipeline": {"id": pipeline_id, "status": status, "results": [], "errors": []}}


class Recorder:
    """Replaces the hook's sleeps: records the backoffs instead of waiting for them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def conn_id(leapi_conn_factory) -> str:
    LeapiHook._idempotency_support.clear()
    return leapi_conn_factory("leapi_unit", BASE, KEY, max_retries=3)


@pytest.fixture
def hook(conn_id: str, monkeypatch: pytest.MonkeyPatch) -> LeapiHook:
    hook = LeapiHook(conn_id, backoff_base=0.01)
    recorder = Recorder()
    monkeypatch.setattr(hook, "_sleep", recorder.sleep)
    monkeypatch.setattr(hook, "_asleep", recorder.asleep)
    hook.recorder = recorder  # type: ignore[attr-defined]
    return hook


# -- connection -------------------------------------------------------------------------------------


def test_settings_come_from_the_connection(leapi_conn_factory):
    conn_id = leapi_conn_factory(
        "leapi_settings",
        "https://api.letsenhance.io/v1/pipeline/",
        "k",
        timeout=12,
        rate_limit_per_minute=30,
        max_retries=2,
        idempotency="never",
    )
    settings = LeapiHook(conn_id).settings
    assert settings.base_url == "https://api.letsenhance.io"
    assert (settings.timeout, settings.rate_limit_per_minute, settings.max_retries) == (12.0, 30, 2)
    assert settings.idempotency.value == "never"
    # Explicit hook arguments win over the extras.
    assert LeapiHook(conn_id, max_retries=0, idempotency="always").settings.max_retries == 0


async def test_async_settings_never_look_the_connection_up_on_the_event_loop(conn_id, monkeypatch):
    import asyncio

    sync_lookup = LeapiHook.get_connection.__func__
    loop_thread_calls = []

    def guarded(cls, *args, **kwargs):
        try:
            asyncio.get_running_loop()
            loop_thread_calls.append(args)  # a sync lookup on the loop blocks the triggerer
        except RuntimeError:
            pass  # in a worker thread (Airflow < 3.3.2 fallback): fine
        return sync_lookup(cls, *args, **kwargs)

    monkeypatch.setattr(LeapiHook, "get_connection", classmethod(guarded))
    settings = await LeapiHook(conn_id).aget_settings()
    assert settings.base_url == BASE and settings.api_key == KEY
    assert loop_thread_calls == []


def test_the_api_key_is_registered_with_the_secrets_masker(leapi_conn_factory):
    from airflow.sdk._shared.secrets_masker import redact

    secret = "masked-key-5f1e2d"
    conn_id = leapi_conn_factory("leapi_masked", BASE, secret)
    assert LeapiHook(conn_id).settings.api_key == secret
    assert secret not in str(redact(f"sending X-API-KEY {secret}"))


async def test_the_api_key_is_masked_from_async_code_too(leapi_conn_factory):
    from airflow.sdk._shared.secrets_masker import redact

    secret = "masked-async-key-9c3b"
    conn_id = leapi_conn_factory("leapi_masked_async", BASE, secret)
    await LeapiHook(conn_id).aget_settings()
    assert secret not in str(redact(f"key {secret}"))


def test_missing_api_key_is_a_clear_error(leapi_conn_factory):
    conn_id = leapi_conn_factory("leapi_nokey", BASE, "")
    with pytest.raises(Exception, match="no API key"):
        _ = LeapiHook(conn_id).settings


def test_ui_field_behaviour_hides_unused_fields_and_relabels_the_key():
    behaviour = LeapiHook.get_ui_field_behaviour()
    assert set(behaviour["hidden_fields"]) == {"schema", "port", "login"}
    assert behaviour["relabeling"]["password"] == "API key"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, "https://api.letsenhance.io"),
        ("api.letsenhance.io", "https://api.letsenhance.io"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("https://proxy.example/leapi/v1/pipeline", "https://proxy.example/leapi"),
    ],
)
def test_base_url_normalization(host, expected):
    assert normalize_base_url(host) == expected


@respx.mock
def test_test_connection_reads_usage(hook):
    route = respx.get(f"{BASE}/v1/me/usage/").respond(200, json={"used": 3, "quota": 10})
    assert hook.test_connection() == (True, "Connected to LEAPI; 7 credits remaining")
    assert route.calls.last.request.headers["X-API-KEY"] == KEY
    respx.get(f"{BASE}/v1/me/usage/").respond(401, json={"detail": "bad key"})
    ok, message = LeapiHook(hook.leapi_conn_id).test_connection()
    assert not ok and "401" in message


# -- submit -----------------------------------------------------------------------------------------


@respx.mock
def test_submit_sends_the_documented_body_key_and_idempotency_key(hook):
    route = respx.post(f"{BASE}/v1/pipeline").respond(200, json=accepted(26082838))
    assert hook.submit_pipeline(REQUEST, idempotency_key="abc") == 26082838
    sent = route.calls.last.request
    assert sent.headers["X-API-KEY"] == KEY
    assert sent.headers[IDEMPOTENCY_KEY_HEADER] == "abc"
    assert json.loads(sent.content) == {
        "source": {"http": {"url": "https://img.test/a.jpg"}},
        "operations": [{"op": "preset/marketplace", "width": 100}],
        "sink": {"temp_store": True},
    }


@respx.mock
def test_rate_limited_submit_honours_retry_after_then_succeeds(hook, capsys):
    route = respx.post(f"{BASE}/v1/pipeline")
    route.side_effect = [
        httpx.Response(
            429, json={"status": "REJECTED", "reason": RATE_LIMIT_REASON}, headers={"Retry-After": "7"}
        ),
        httpx.Response(200, json={"status": "REJECTED", "reason": RATE_LIMIT_REASON}),
        httpx.Response(200, json=accepted(5)),
    ]
    assert hook.submit_pipeline(REQUEST) == 5
    assert route.call_count == 3
    assert 7.0 <= hook.recorder.delays[0] <= 8.0
    logged = capsys.readouterr().out.splitlines()
    assert sum("backoff" in line and "rate limited" in line for line in logged) == 2
    keys = {call.request.headers[IDEMPOTENCY_KEY_HEADER] for call in route.calls}
    assert len(keys) == 1, "every attempt of one submit must carry the same Idempotency-Key"


@respx.mock
def test_other_rejection_is_not_retried_and_carries_the_reason(hook):
    route = respx.post(f"{BASE}/v1/pipeline").respond(
        400, json={"status": "REJECTED", "reason": "operations.0.width: must be >= 1"}
    )
    with pytest.raises(LeapiRejectedError, match=r"operations\.0\.width") as info:
        hook.submit_pipeline(REQUEST)
    assert info.value.reason == "operations.0.width: must be >= 1"
    assert route.call_count == 1


@respx.mock
def test_connect_error_on_submit_is_retried_because_nothing_was_sent(hook):
    route = respx.post(f"{BASE}/v1/pipeline")
    route.side_effect = [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow"),
        httpx.Response(200, json=accepted(9)),
    ]
    assert hook.submit_pipeline(REQUEST) == 9
    assert route.call_count == 3


@respx.mock
def test_ambiguous_submit_failure_without_idempotency_support_is_not_retried(hook):
    post = respx.post(f"{BASE}/v1/pipeline")
    post.side_effect = httpx.ReadTimeout("no answer")
    probe = respx.get(f"{BASE}/v1/me/usage/").respond(200, json={"used": 0})
    with pytest.raises(LeapiSubmitUncertainError, match="may have been created") as info:
        hook.submit_pipeline(REQUEST, idempotency_key="k-1")
    assert info.value.idempotency_key == "k-1"
    assert post.call_count == 1, "a second POST could create (and charge) a second pipeline"
    assert probe.call_count == 1


@respx.mock
def test_ambiguous_submit_failure_is_retried_with_the_same_key_when_the_server_dedupes(hook):
    supported = {IDEMPOTENCY_SUPPORT_HEADER: "supported"}
    respx.get(f"{BASE}/v1/me/usage/").respond(200, json={"used": 0}, headers=supported)
    post = respx.post(f"{BASE}/v1/pipeline")
    post.side_effect = [
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(200, json=accepted(11), headers=supported),
    ]
    assert hook.submit_pipeline(REQUEST, idempotency_key="k-2") == 11
    assert [c.request.headers[IDEMPOTENCY_KEY_HEADER] for c in post.calls] == ["k-2"] * 3


@respx.mock
def test_idempotency_never_sends_no_key_and_never_retries_ambiguous_failures(leapi_conn_factory):
    conn_id = leapi_conn_factory("leapi_never", BASE, KEY, idempotency="never")
    post = respx.post(f"{BASE}/v1/pipeline").respond(500, text="boom")
    with pytest.raises(LeapiSubmitUncertainError):
        LeapiHook(conn_id).submit_pipeline(REQUEST)
    assert post.call_count == 1
    assert IDEMPOTENCY_KEY_HEADER not in post.calls.last.request.headers


@respx.mock
def test_idempotency_always_retries_ambiguous_failures(leapi_conn_factory, monkeypatch):
    conn_id = leapi_conn_factory("leapi_always", BASE, KEY, idempotency="always")
    hook = LeapiHook(conn_id, backoff_base=0.001)
    monkeypatch.setattr(hook, "_sleep", lambda s: None)
    post = respx.post(f"{BASE}/v1/pipeline")
    post.side_effect = [httpx.ReadTimeout("t"), httpx.Response(200, json=accepted(3))]
    assert hook.submit_pipeline(REQUEST) == 3


def test_derived_idempotency_keys_are_stable_per_task_and_request():
    other = PipelineRequest.build("https://img.test/b.jpg", [{"op": "preset/print"}])
    key = derive_idempotency_key(REQUEST, "dag", "task", "run", -1)
    assert key == derive_idempotency_key(REQUEST, "dag", "task", "run", -1)
    assert key != derive_idempotency_key(REQUEST, "dag", "task", "run", 0)
    assert key != derive_idempotency_key(other, "dag", "task", "run", -1)


# -- reads ------------------------------------------------------------------------------------------


@respx.mock
def test_get_pipeline_rides_out_a_503_storm_with_logged_backoff(hook, capsys):
    route = respx.get(f"{BASE}/v1/pipeline/42")
    route.side_effect = [
        httpx.Response(503),
        httpx.Response(503),
        httpx.ReadTimeout("t"),
        httpx.Response(200, json=pipeline_body(42)),
    ]
    pipeline = hook.get_pipeline(42)
    assert pipeline.status is PipelineStatus.DONE
    assert route.call_count == 4
    backoffs = [line for line in capsys.readouterr().out.splitlines() if "backoff" in line]
    assert len(backoffs) == 3 and "HTTP 503" in backoffs[0]
    # Exponential: the ceilings are 0.01, 0.02, 0.04 (equal jitter keeps each above half of it).
    assert [d >= c / 2 for d, c in zip(hook.recorder.delays, (0.01, 0.02, 0.04), strict=False)] == [True] * 3


@respx.mock
def test_retries_run_out(hook):
    route = respx.get(f"{BASE}/v1/pipeline/1").respond(500)
    with pytest.raises(LeapiHTTPError, match="after 4 attempts"):
        hook.get_pipeline(1)
    assert route.call_count == 4  # first try + max_retries=3


@respx.mock
def test_auth_and_not_found_errors_are_not_retried(hook):
    respx.get(f"{BASE}/v1/pipeline/1").respond(401, json={"detail": "invalid API key"})
    respx.get(f"{BASE}/v1/pipeline/2").respond(404, json={"detail": "not found"})
    with pytest.raises(LeapiAuthError, match="API key"):
        hook.get_pipeline(1)
    with pytest.raises(LeapiNotFoundError):
        hook.get_pipeline(2)
    assert respx.calls.call_count == 2


@respx.mock
async def test_async_twins_retry_too(hook):
    route = respx.get(f"{BASE}/v1/pipeline/8")
    route.side_effect = [
        httpx.Response(503, headers={"Retry-After": "2"}),
        httpx.Response(200, json=pipeline_body(8, "PROCESSING")),
    ]
    async with hook:
        pipeline = await hook.aget_pipeline(8)
    assert pipeline.status is PipelineStatus.PROCESSING
    assert 2.0 <= hook.recorder.delays[0] <= 2.3


def test_retry_after_forms():
    future = datetime.now(UTC) + timedelta(seconds=30)
    assert retry_after_seconds(httpx.Headers({"Retry-After": "12"})) == 12
    assert (
        25 < retry_after_seconds(httpx.Headers({"Retry-After": format_datetime(future, usegmt=True)})) <= 30
    )
    assert retry_after_seconds(httpx.Headers({"RateLimit-Reset": "4"})) == 4
    assert retry_after_seconds(httpx.Headers({})) is None


def test_rate_limiter_allows_per_minute_then_spaces_requests():
    limiter = SlidingWindowRateLimiter(2)
    waits = [limiter.reserve() for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]
    assert 59 < waits[2] <= 60 and 59 < waits[3] <= 60 and 119 < waits[4] <= 120


@respx.mock
def test_client_side_rate_limit_delays_requests(leapi_conn_factory, monkeypatch):
    conn_id = leapi_conn_factory("leapi_limited", BASE, KEY, rate_limit_per_minute=2)
    hook = LeapiHook(conn_id)
    slept: list[float] = []
    monkeypatch.setattr(hook, "_sleep", slept.append)
    respx.get(f"{BASE}/v1/me/usage/").respond(200, json={})
    for _ in range(3):
        hook.get_usage()
    assert len(slept) == 1 and slept[0] > 59


# -- downloads --------------------------------------------------------------------------------------


SIGNED = "https://s3.test/tmp/p/1/out.jpg?X-Amz-Signature=deadbeef&X-Amz-Expires=86400"


@respx.mock
def test_download_streams_to_the_file_without_the_api_key(hook):
    payload = bytes(range(256)) * 40_000  # ~10 MB
    route = respx.get(SIGNED).respond(200, content=payload, headers={"Content-Type": "image/jpeg"})
    sink = io.BytesIO()
    info = hook.download_result(SIGNED, sink, chunk_size=64 * 1024)
    assert sink.getvalue() == payload
    assert info.byte_count == len(payload) and info.sha256 == hashlib.sha256(payload).hexdigest()
    assert info.content_type == "image/jpeg"
    assert "X-API-KEY" not in route.calls.last.request.headers


@respx.mock
def test_download_restarts_cleanly_after_a_dropped_connection(hook):
    payload = b"x" * 300_000

    def broken_stream():
        yield payload[:100_000]
        raise httpx.ReadError("connection reset")

    route = respx.get(SIGNED)
    route.side_effect = [
        httpx.Response(200, stream=_IterStream(broken_stream())),
        httpx.Response(200, content=payload),
    ]
    sink = io.BytesIO(b"HEAD")
    sink.seek(4)
    info = hook.download_result(SIGNED, sink)
    assert sink.getvalue() == b"HEAD" + payload, "the broken first attempt must not leave bytes behind"
    assert info.byte_count == len(payload)


@respx.mock
def test_download_403_is_reported_not_retried(hook):
    route = respx.get(SIGNED).respond(403, text="<Error><Code>AccessDenied</Code>Request has expired</Error>")
    with pytest.raises(LeapiHTTPError) as info:
        hook.download_result(SIGNED, io.BytesIO())
    assert info.value.status_code == 403 and not isinstance(info.value, LeapiAuthError)
    assert "deadbeef" not in str(info.value)
    assert route.call_count == 1


class _IterStream(httpx.SyncByteStream):
    def __init__(self, iterator):
        self._iterator = iterator

    def __iter__(self):
        yield from self._iterator


# -- logs -------------------------------------------------------------------------------------------


def test_httpx_request_logs_lose_signed_query_strings():
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        'HTTP Request: %s %s "%s %d %s"',
        ("GET", httpx.URL(SIGNED), "HTTP/1.1", 200, "OK"),
        None,
    )
    RedactSignedUrlsFilter().filter(record)
    message = record.getMessage()
    assert "deadbeef" not in message and "https://s3.test/tmp/p/1/out.jpg?<redacted>" in message
    assert any(isinstance(f, RedactSignedUrlsFilter) for f in logging.getLogger("httpx").filters)


async def test_every_client_of_every_hook_shares_one_tls_context(conn_id):
    # A fresh context per client costs ~50 ms of CPU; a triggerer with many triggers would stall on it.
    first, second = LeapiHook(conn_id), LeapiHook(conn_id)
    sync_client, async_client = first.get_conn(), await second.aget_conn()
    contexts = {
        id(client._transport._pool._ssl_context)  # httpcore's pool holds the context it was given
        for client in (sync_client, async_client)
    }
    assert contexts == {id(shared_tls_context())}
    first.close()
    await second.aclose()
