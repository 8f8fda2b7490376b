"""The Redis hand-off between the receiver and the trigger, on a real redis-server: once per pipeline, kept
until read (the triggerer down, the task not deferred yet), woken within milliseconds, and never an error
for the waiting trigger when Redis is away."""

from __future__ import annotations

import asyncio
import time

import pytest

from leapi_provider.webhooks.hints import HintPublisher, WebhookHintSource, hint_keys
from leapi_provider.webhooks.tokens import channel_for_task

CHANNEL = channel_for_task("feed", "manual__1", "batch", 0)


@pytest.fixture
async def publisher(webhook_settings):
    publisher = HintPublisher(location=webhook_settings.redis, ttl_s=webhook_settings.hint_ttl_s)
    yield publisher
    await publisher.aclose()


@pytest.fixture
async def source(webhook_conns):
    async with WebhookHintSource(channel=CHANNEL, conn_id=webhook_conns) as hint_source:
        yield hint_source


async def test_hints_published_before_anyone_listens_are_kept_and_read_at_once(publisher, source):
    # The webhook came while the triggerer was down / before the task deferred: nobody was reading.
    assert await publisher.publish(CHANNEL, 11)
    assert await publisher.publish(CHANNEL, 12)
    started = time.monotonic()
    assert await source.wait_for_hints(10) == {11, 12}
    assert time.monotonic() - started < 1, "queued hints are returned without waiting"


async def test_a_duplicate_is_queued_once_even_after_it_was_read(publisher, source, redis_client):
    assert await publisher.publish(CHANNEL, 7) is True
    assert await publisher.publish(CHANNEL, 7) is False, "a retried delivery is a duplicate"
    assert await source.wait_for_hints(1) == {7}
    # A late (replayed or retried) webhook after the hint was consumed: still a duplicate.
    assert await publisher.publish(CHANNEL, 7) is False
    assert await source.wait_for_hints(0.3) == set()
    seen, hints = hint_keys(CHANNEL)
    assert redis_client.smembers(seen) == {"7"} and redis_client.llen(hints) == 0


async def test_a_waiting_consumer_wakes_within_milliseconds_of_the_publish(publisher, source):
    async def publish_later() -> float:
        await asyncio.sleep(0.5)
        published_at = time.monotonic()
        await publisher.publish(CHANNEL, 99)
        return published_at

    waiter = asyncio.create_task(source.wait_for_hints(10))
    published_at = await publish_later()
    assert await waiter == {99}
    assert time.monotonic() - published_at < 0.25


async def test_nothing_to_read_returns_an_empty_set_after_the_timeout(source):
    started = time.monotonic()
    assert await source.wait_for_hints(0.4) == set()
    assert 0.35 <= time.monotonic() - started < 2
    assert await source.wait_for_hints(0) == set(), "a zero timeout never blocks (BLPOP 0 would)"


async def test_hints_expire_with_their_ttl(webhook_settings, redis_client):
    publisher = HintPublisher(location=webhook_settings.redis, ttl_s=60)
    try:
        await publisher.publish(CHANNEL, 5)
    finally:
        await publisher.aclose()
    seen, hints = hint_keys(CHANNEL)
    assert 0 < redis_client.ttl(seen) <= 60 and 0 < redis_client.ttl(hints) <= 60
    assert seen.startswith("leapi:webhooks:{") and seen.split("{")[1].split("}")[0] == CHANNEL


async def test_channels_do_not_see_each_other(publisher, webhook_conns):
    other = channel_for_task("feed", "manual__1", "batch", 1)
    await publisher.publish(other, 1)
    async with WebhookHintSource(channel=CHANNEL, conn_id=webhook_conns) as source:
        assert await source.wait_for_hints(0.2) == set()
    async with WebhookHintSource(channel=other, conn_id=webhook_conns) as source:
        assert await source.wait_for_hints(0.2) == {1}


async def test_redis_down_means_a_quiet_timeout_then_recovery(publisher, source, redis_server, caplog):
    redis_server.stop()
    try:
        started = time.monotonic()
        assert await source.wait_for_hints(0.5) == set()
        assert 0.45 <= time.monotonic() - started < 5
        assert "polling instead" in caplog.text
    finally:
        redis_server.start()
    await publisher.aclose()  # (its connection died with the server)
    await publisher.publish(CHANNEL, 3)
    assert await source.wait_for_hints(2) == {3}


async def test_a_cancelled_wait_leaves_the_source_usable(publisher, source):
    waiter = asyncio.create_task(source.wait_for_hints(30))
    await asyncio.sleep(0.2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await publisher.publish(CHANNEL, 8)
    assert await source.wait_for_hints(2) == {8}


def test_the_source_serializes_to_json_kwargs():
    source = WebhookHintSource(channel=CHANNEL, conn_id="hooks")
    assert source.serialize() == {"channel": CHANNEL, "conn_id": "hooks"}
    rebuilt = WebhookHintSource.deserialize(source.serialize())
    assert (rebuilt.channel, rebuilt.conn_id) == (CHANNEL, "hooks")
    with pytest.raises(ValueError):
        WebhookHintSource(channel="../x")


async def test_a_rearmed_id_is_hinted_again(publisher, source):
    # A premature hint (its read found the pipeline running) must not swallow the true webhook.
    assert await publisher.publish(CHANNEL, 21)
    assert await source.wait_for_hints(1) == {21}
    assert await publisher.publish(CHANNEL, 21) is False
    await source.rearm([21])
    assert await publisher.publish(CHANNEL, 21) is True
    assert await source.wait_for_hints(1) == {21}
