"""LeapiHook: the Airflow side of the LEAPI client (connection, secrets masking, connection form and test,
async lookups for triggers) and how its errors meet Airflow's retries. The transport itself is tested in
``tests/leapi``."""

from __future__ import annotations

import asyncio
import io
import socket
import time
import traceback
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx
from airflow.sdk.exceptions import AirflowFailException

import leapi
from devkit.server import free_port
from leapi import errors
from leapi.constants import RATE_LIMIT_REASON
from leapi.idempotency import ADVERTISED
from leapi.models import PipelineRequest, PipelineStatus
from leapi.results import ResultFile
from leapi.transport import shared_tls_context
from leapi_provider.exceptions import LeapiTriggerEventError, fail_on_permanent_errors, is_permanent
from leapi_provider.hooks.leapi import USER_AGENT, LeapiHook

BASE = "https://leapi.test"
KEY = "unit-secret-key-123"
REQUEST = PipelineRequest.build("https://img.test/a.jpg", [{"op": "preset/marketplace", "width": 100}])


@pytest.fixture
def conn_id(leapi_conn_factory) -> str:
    ADVERTISED.clear()
    return leapi_conn_factory("leapi_unit", BASE, KEY, max_retries=0)


# -- the connection -----------------------------------------------------------------------------------


def test_the_client_is_built_from_the_connection(leapi_conn_factory):
    conn_id = leapi_conn_factory(
        "leapi_settings",
        "https://api.letsenhance.io/v1/pipeline/",
        "k-12345",
        timeout=12,
        rate_limit_per_minute=30,
        max_retries=2,
        idempotency="never",
    )
    with LeapiHook(conn_id, backoff_base=0.5) as hook:
        client = hook.get_conn()
        assert isinstance(client, leapi.Client) and hook.get_conn() is client
        assert client.base_url == "https://api.letsenhance.io"
        assert (client.timeout, client.rate_limit_per_minute, client.retry_policy.max_retries) == (
            12.0,
            30,
            2,
        )
        assert client.idempotency is leapi.IdempotencyMode.NEVER and client.retry_policy.backoff_base == 0.5
        assert client.user_agent == USER_AGENT and USER_AGENT.startswith("airflow-provider-leapi/")
    # Explicit hook arguments win over the extras.
    overridden = LeapiHook(conn_id, max_retries=0, idempotency="always").get_conn()
    assert overridden.retry_policy.max_retries == 0 and overridden.idempotency is leapi.IdempotencyMode.ALWAYS


def test_a_bare_host_is_understood_and_empty_extras_are_not_set(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAPI_FORM",
        '{"conn_type": "leapi", "host": "api.letsenhance.io", "password": "k-123", '
        '"extra": {"timeout": "7", "idempotency": "ALWAYS", "max_retries": ""}}',
    )
    settings = LeapiHook("leapi_form").settings
    assert settings.base_url == "https://api.letsenhance.io"
    assert settings.timeout == 7.0 and settings.idempotency is leapi.IdempotencyMode.ALWAYS
    assert settings.max_retries == leapi.transport.DEFAULT_MAX_RETRIES


async def test_async_settings_never_look_the_connection_up_on_the_event_loop(conn_id, monkeypatch):
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
    async with LeapiHook(conn_id) as hook:
        client = await hook.aget_conn()
        assert isinstance(client, leapi.AsyncClient) and client.base_url == BASE
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


def test_a_missing_api_key_is_a_clear_error(leapi_conn_factory):
    conn_id = leapi_conn_factory("leapi_nokey", BASE, "")
    with pytest.raises(ValueError, match="no API key"):
        LeapiHook(conn_id).get_conn()


def test_ui_field_behaviour_hides_unused_fields_and_relabels_the_key():
    behaviour = LeapiHook.get_ui_field_behaviour()
    assert set(behaviour["hidden_fields"]) == {"schema", "port", "login"}
    assert behaviour["relabeling"]["password"] == "API key"


@respx.mock
def test_test_connection_reads_usage(conn_id):
    route = respx.get(f"{BASE}/v1/me/usage/").respond(200, json={"used": 3, "quota": 10})
    assert LeapiHook(conn_id).test_connection() == (True, "Connected to LEAPI; 7 credits remaining")
    assert route.calls.last.request.headers["X-API-KEY"] == KEY
    respx.get(f"{BASE}/v1/me/usage/").respond(401, json={"status": "REJECTED", "reason": "bad key"})
    ok, message = LeapiHook(conn_id).test_connection()
    assert not ok and "401" in message and KEY not in message


@pytest.mark.parametrize("where", ["refused", "silent"])
def test_test_connection_answers_within_ten_seconds_whatever_the_retry_settings(leapi_conn_factory, where):
    """Issue 20: "Test connection" took 44 s against a host where nothing listens (six retries with
    backoff). It makes one attempt with a short timeout, whatever the connection's extras say."""
    listener = None
    if where == "silent":  # accepts the connection (the kernel's backlog) but never answers
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    else:
        port = free_port()
    conn_id = leapi_conn_factory(
        f"leapi_{where}", f"http://127.0.0.1:{port}", KEY, max_retries=6, rate_limit_budget=600, timeout=60
    )
    started = time.monotonic()
    try:
        ok, message = LeapiHook(conn_id).test_connection()
    finally:
        if listener is not None:
            listener.close()
    assert not ok and ("Connect" in message or "Timeout" in message), message
    assert time.monotonic() - started < 10


def test_pipeline_urls(conn_id):
    assert LeapiHook(conn_id).pipeline_url(26082838) == f"{BASE}/v1/pipeline/26082838"


# -- how its errors meet Airflow's retries -------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (errors.LeapiAuthError("401", status_code=401, method="GET", url="/x"), True),
        (errors.LeapiRejectedError("operations.0.width: bad", status_code=400), True),
        (errors.LeapiResultExpiredError("gone", pipeline_id=1, expired_at=None), True),
        (LeapiTriggerEventError("Unexpected event"), True),
        (errors.LeapiRateLimitError(RATE_LIMIT_REASON, status_code=429, retry_after=9, attempts=7), False),
        (errors.LeapiHTTPError("503", status_code=503, method="GET", url="/x"), False),
        (errors.LeapiNotFoundError("404", status_code=404, method="GET", url="/x"), False),
        (errors.LeapiSubmitUncertainError("maybe", idempotency_key="k"), False),
        (errors.LeapiWaitTimeoutError("slow", pending_ids=[3]), False),
        (errors.LeapiPipelineFailedError("ERROR", pipeline_ids=[3]), False),
        (errors.LeapiResultVerificationError("short"), False),
    ],
)
def test_only_errors_no_retry_can_fix_fail_the_task_at_once(error, permanent):
    assert is_permanent(error) is permanent
    with (
        pytest.raises(AirflowFailException if permanent else type(error)) as info,
        fail_on_permanent_errors(),
    ):
        raise error
    if permanent:
        assert info.value.__cause__ is error, "the client's error is chained, attributes and all"
        assert str(error) in str(info.value)
    else:
        assert info.value is error, "passed on unchanged: Airflow retries the task"


@respx.mock
def test_the_hook_raises_the_client_s_own_errors_with_their_traceback(conn_id):
    respx.post(f"{BASE}/v1/pipeline").respond(400, json={"status": "REJECTED", "reason": "quality: too high"})
    with pytest.raises(leapi.LeapiRejectedError) as info:
        LeapiHook(conn_id).submit_pipeline(REQUEST)
    assert type(info.value) is errors.LeapiRejectedError
    assert info.value.reason == "quality: too high" and info.value.status_code == 400
    frames = "".join(traceback.format_tb(info.value.__traceback__))
    assert "leapi/transport.py" in frames, "the traceback shows where the client raised"


@respx.mock
def test_a_rate_limit_that_outlasts_the_budget_lets_airflow_retry_the_task(conn_id):
    respx.post(f"{BASE}/v1/pipeline").respond(429, json={"status": "REJECTED", "reason": RATE_LIMIT_REASON})
    with pytest.raises(leapi.LeapiRateLimitError) as info, fail_on_permanent_errors():
        LeapiHook(conn_id, rate_limit_budget=0).submit_pipeline(REQUEST)
    assert info.value.rate_limited


@respx.mock
async def test_async_methods_raise_the_client_s_errors_too(conn_id):
    respx.get(f"{BASE}/v1/pipeline/5").respond(401, json={"status": "REJECTED", "reason": "bad key"})
    respx.get(f"{BASE}/v1/pipeline/6").respond(200, json={"pipeline": {"id": 6, "status": "DONE"}})
    async with LeapiHook(conn_id) as hook:
        with pytest.raises(leapi.LeapiAuthError):
            await hook.aget_pipeline(5)
        assert (await hook.aget_pipeline(6)).status is PipelineStatus.DONE


@respx.mock
def test_an_expired_result_says_what_to_do_in_airflow(conn_id):
    url = "https://s3.test/p/1/a.jpg?X-Amz-Signature=deadbeef"
    respx.get(url).respond(403, text="<Error>Request has expired</Error>")
    result = ResultFile(
        pipeline_id=1,
        index=0,
        source_url="https://img.test/a.jpg",
        preset="marketplace",
        file_name="a__marketplace__1.jpg",
        tmp_url=url,
        mime="image/jpeg",
        width=10,
        height=10,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        expiry_is_exact=False,
    )
    with pytest.raises(AirflowFailException) as info, fail_on_permanent_errors():
        LeapiHook(conn_id).download_verified(result, io.BytesIO())
    assert isinstance(info.value.__cause__, leapi.LeapiResultExpiredError)
    assert info.value.__cause__.pipeline_id == 1
    assert "clear the task that submitted the pipeline" in str(info.value)
    assert "deadbeef" not in str(info.value)


@respx.mock
def test_downloads_never_send_the_api_key(conn_id):
    url = "https://s3.test/p/1/a.jpg?X-Amz-Signature=deadbeef"
    route = respx.get(url).respond(200, content=b"x" * 1000, headers={"Content-Type": "image/jpeg"})
    sink = io.BytesIO()
    info = LeapiHook(conn_id).get_conn().download(url, sink, chunk_size=64)
    assert info.byte_count == 1000 and sink.getvalue() == b"x" * 1000
    assert "X-API-KEY" not in route.calls.last.request.headers


async def test_every_client_of_every_hook_shares_one_tls_context(conn_id):
    # A fresh context per client costs ~50 ms of CPU; a triggerer with many triggers would stall on it.
    first, second = LeapiHook(conn_id), LeapiHook(conn_id)
    sync_client, async_client = first.get_conn(), await second.aget_conn()
    pools = [sync_client._http._transport._pool, async_client._http._transport._pool]
    assert {id(pool._ssl_context) for pool in pools} == {id(shared_tls_context())}
    first.close()
    await second.aclose()


def test_a_hook_used_from_threads_builds_one_client(conn_id):
    from concurrent.futures import ThreadPoolExecutor

    hook = LeapiHook(conn_id)
    with ThreadPoolExecutor(8) as pool:
        clients = set(pool.map(lambda _: id(hook.get_conn()), range(32)))
    assert len(clients) == 1
    hook.close()


def test_transport_errors_do_not_leak_as_httpx_errors(conn_id):
    with respx.mock:
        respx.get(f"{BASE}/v1/pipeline/1").mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(leapi.LeapiHTTPError, match="after 1 attempts: ConnectError"):
            LeapiHook(conn_id).get_pipeline(1)
