"""The receiver app (served in-process over ASGI) with a real Redis behind it: forged, replayed, duplicated
and malformed webhooks change nothing; a good one is queued once and answered 202 at once."""

from __future__ import annotations

import dataclasses
import json
import time
from urllib.parse import urlsplit

import httpx
import pytest

from leapi.webhooks import generate_secret, signed_headers
from leapi_provider.webhooks.hints import WebhookHintSource, hint_keys
from leapi_provider.webhooks.receiver import MAX_BODY_BYTES, BadWebhookBody, create_app, parse_webhook_body
from leapi_provider.webhooks.tokens import channel_for_task, channel_token
from tests.fixtures.webhooks import TOKEN_SECRET

CHANNEL = channel_for_task("feed", "manual__1", "batch", 2)
SIGNING_SECRET = generate_secret()


def leapi_server_body(pipeline_id: int, status: str = "DONE") -> bytes:
    """What leapi-server POSTs (``{"id", "status", "pipeline"}``, compact JSON)."""
    body = {
        "id": pipeline_id,
        "status": status,
        "pipeline": {"id": pipeline_id, "status": status, "results": []},
    }
    return json.dumps(body, separators=(",", ":")).encode()


@pytest.fixture
def settings(webhook_settings):
    return webhook_settings


@pytest.fixture
def signed_settings(webhook_settings):
    return dataclasses.replace(webhook_settings, signing_secret=SIGNING_SECRET)


def receiver(settings) -> httpx.AsyncClient:
    app = create_app(load_settings=lambda: settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver")


def path(settings, channel: str = CHANNEL, token: str | None = None) -> str:
    url = urlsplit(settings.notify_url(channel))
    query = url.query if token is None else f"token={token}"
    return f"/v1/{channel}?{query}"


def queued(redis_client, channel: str = CHANNEL) -> list[str]:
    return redis_client.lrange(hint_keys(channel)[1], 0, -1)


async def test_a_good_webhook_is_queued_once_and_answered_202(settings, redis_client):
    async with receiver(settings) as client:
        first = await client.post(path(settings), content=leapi_server_body(41))
        again = await client.post(path(settings), content=leapi_server_body(41))
    assert first.status_code == 202 and first.json() == {"queued": True, "pipeline_id": 41}
    assert again.status_code == 202 and again.json()["queued"] is False
    assert queued(redis_client) == ["41"]


async def test_the_trigger_side_sees_what_the_receiver_queued(settings, webhook_conns):
    async with receiver(settings) as client:
        await client.post(path(settings), content=leapi_server_body(5))
        await client.post(path(settings), content=leapi_server_body(6))
    async with WebhookHintSource(channel=CHANNEL, conn_id=webhook_conns) as source:
        assert await source.wait_for_hints(1) == {5, 6}


@pytest.mark.parametrize(
    "token",
    [
        "",  # none
        "A" * 32,  # guessed
        channel_token("another-secret-entirely", CHANNEL),  # another receiver's
        channel_token(TOKEN_SECRET, channel_for_task("feed", "manual__1", "batch", 3)),
    ],
    ids=["missing", "guessed", "other-secret", "other-channel"],
)
async def test_a_forged_token_is_403_and_queues_nothing(settings, redis_client, token):
    async with receiver(settings) as client:
        answer = await client.post(path(settings, token=token), content=leapi_server_body(1))
    assert answer.status_code == 403
    assert queued(redis_client) == [] and redis_client.keys("*") == []


async def test_a_malformed_channel_is_404(settings, redis_client):
    async with receiver(settings) as client:
        answer = await client.post("/v1/not%20a%20channel?token=x", content=leapi_server_body(1))
    assert answer.status_code == 404 and redis_client.keys("*") == []


async def test_with_a_signing_secret_a_valid_signature_is_required(signed_settings, redis_client):
    body = leapi_server_body(77)
    async with receiver(signed_settings) as client:
        unsigned = await client.post(path(signed_settings), content=body)
        bad = await client.post(
            path(signed_settings), content=body, headers=signed_headers(generate_secret(), "msg_1", body)
        )
        tampered = await client.post(
            path(signed_settings),
            content=leapi_server_body(78),
            headers=signed_headers(SIGNING_SECRET, "msg_1", body),
        )
        assert queued(redis_client) == [], "nothing queued before a valid signature"
        good = await client.post(
            path(signed_settings), content=body, headers=signed_headers(SIGNING_SECRET, "msg_1", body)
        )
    assert [unsigned.status_code, bad.status_code, tampered.status_code] == [401, 401, 401]
    assert "signature" in bad.json()["detail"]
    assert good.status_code == 202 and queued(redis_client) == ["77"]


async def test_a_replayed_delivery_is_refused_when_old_and_deduplicated_when_fresh(
    signed_settings, redis_client
):
    body = leapi_server_body(90)
    fresh = signed_headers(SIGNING_SECRET, "msg_9", body)
    stale = signed_headers(SIGNING_SECRET, "msg_9", body, timestamp=int(time.time()) - 3600)
    async with receiver(signed_settings) as client:
        old = await client.post(path(signed_settings), content=body, headers=stale)
        assert old.status_code == 401 and queued(redis_client) == []
        first = await client.post(path(signed_settings), content=body, headers=fresh)
        replay = await client.post(path(signed_settings), content=body, headers=fresh)
    assert first.json()["queued"] is True and replay.json()["queued"] is False
    assert queued(redis_client) == ["90"]


async def test_bodies_without_a_pipeline_id_or_too_large_are_refused(settings, redis_client):
    async with receiver(settings) as client:
        no_id = await client.post(path(settings), content=b'{"status": "DONE"}')
        not_json = await client.post(path(settings), content=b"<xml/>")
        huge = await client.post(path(settings), content=b'{"id": 1, "x": "' + b"a" * MAX_BODY_BYTES + b'"}')
    assert no_id.status_code == 422 and "pipeline id" in no_id.json()["detail"]
    assert not_json.status_code == 422
    assert huge.status_code == 413
    assert redis_client.keys("*") == []


async def test_a_processing_notice_is_acknowledged_but_not_queued(settings, redis_client):
    async with receiver(settings) as client:
        answer = await client.post(path(settings), content=leapi_server_body(3, status="PROCESSING"))
    assert answer.status_code == 202 and answer.json()["queued"] is False
    assert redis_client.keys("*") == []


async def test_redis_down_is_503_so_that_leapi_retries(settings, redis_server):
    redis_server.stop()
    try:
        async with receiver(settings) as client:
            answer = await client.post(path(settings), content=leapi_server_body(4))
    finally:
        redis_server.start()
    assert answer.status_code == 503


async def test_an_unconfigured_receiver_is_503():
    def missing():
        raise LookupError("The conn_id `leapi_webhooks_default` isn't defined")

    app = create_app(load_settings=missing)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        answer = await client.post(f"/v1/{CHANNEL}?token=x", content=leapi_server_body(1))
    assert answer.status_code == 503


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (leapi_server_body(12), "application/json", (12, "DONE")),
        (b'{"id": 12}', "application/json", (12, None)),
        (b'{"pipeline_id": "12", "status": "error"}', "application/json", (12, "ERROR")),
        (b'{"pipeline": {"id": 12, "status": "DONE"}}', "application/json", (12, "DONE")),
        (b"pipeline_id=12&status=DONE", "application/x-www-form-urlencoded", (12, "DONE")),
        (b"id=12", "application/x-www-form-urlencoded; charset=utf-8", (12, None)),
    ],
)
def test_every_documented_and_observed_body_form_names_its_pipeline(body, content_type, expected):
    notice = parse_webhook_body(body, content_type)
    assert (notice.pipeline_id, notice.status) == expected


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"id": true}', b'{"id": -4}', b'{"id": "x"}', b'{"id": 1, "pipeline": {"id": 2}}'],
)
def test_bodies_naming_no_single_pipeline_are_bad(body):
    with pytest.raises(BadWebhookBody):
        parse_webhook_body(body)
