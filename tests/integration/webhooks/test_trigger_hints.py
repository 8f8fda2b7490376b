"""``LeapiPipelineTrigger`` with webhook hints, on the whole chain: a real ``leapi-server`` signs and POSTs its
webhook to the receiver (served over HTTP under ``/leapi-webhooks``), which hands it through a real Redis to
the trigger. The webhook only makes a status read happen sooner: lost, forged or unhandled hints never fail
the wait, and polling (at the long fallback gap) still ends it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.server import RunningServer
from devkit.sources import GatedPhotos, serve_gated_photos
from leapi_provider.triggers.leapi import LeapiPipelineTrigger, validate_pipeline_event
from leapi_provider.webhooks.hints import HintPublisher, WebhookHintSource
from leapi_provider.webhooks.tokens import channel_for_task
from tests.fixtures.webhooks import SIGNING_SECRET, serve_receiver

PHOTOS = ("coffee", "chelsea", "astronaut")


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[GatedPhotos]:
    with serve_gated_photos(tmp_path, PHOTOS) as sources:
        yield sources


@pytest.fixture
def receiver(webhook_settings):
    with serve_receiver(dataclasses.replace(webhook_settings, signing_secret=SIGNING_SECRET)) as served:
        yield served


@pytest.fixture
def conns(signing_server, leapi_conn_factory, webhook_conns) -> str:
    leapi_conn_factory("leapi_default", signing_server.base_url, signing_server.api_key)
    return webhook_conns


def submit(server: RunningServer, url: str, notify_url: str | None) -> int:
    body = {"source": {"http": {"url": [url]}}, "operations": [{"op": "preset/marketplace", "width": 64}]}
    if notify_url:
        body["notify_url"] = notify_url
    with server.client() as client:
        answer = client.post("/v1/pipeline", json=body)
    answer.raise_for_status()
    return answer.json()["pipeline"]["id"]


def status_reads(server: RunningServer, pipeline_id: int) -> int:
    return len(re.findall(rf'"GET /v1/pipeline/{pipeline_id} HTTP', server.logs()))


def webhook_deliveries(server: RunningServer, pipeline_id: int) -> list[dict]:
    with server.client() as client:
        return client.get(f"/v1/pipeline/{pipeline_id}/webhooks").json()["deliveries"]


def hinted_trigger(pipeline_id: int, channel: str, *, poll_interval: float) -> LeapiPipelineTrigger:
    return LeapiPipelineTrigger(
        pipeline_ids=[pipeline_id],
        end_time=time.time() + 120,
        poll_interval=poll_interval,
        initial_poll_interval=0.5,
        webhook_hints=WebhookHintSource(channel=channel).serialize(),
    )


async def run_until_event(
    trigger: LeapiPipelineTrigger, *, open_gate=None, after: float = 1.0
) -> tuple[dict, float]:
    """The trigger's event, and the seconds from ``open_gate()`` (called ``after`` s into the wait) to it."""
    events = trigger.run()
    waiting = asyncio.ensure_future(anext(events))
    await asyncio.sleep(after)
    opened = time.monotonic()
    if open_gate:
        open_gate()
    event = await asyncio.wait_for(waiting, timeout=90)
    elapsed = time.monotonic() - opened
    await events.aclose()
    return validate_pipeline_event(event.payload), elapsed


async def test_the_signed_webhook_wakes_the_trigger_with_one_status_read(
    signing_server, gated, receiver, conns
):
    channel = channel_for_task("feed", "webhook_run", "batch", 0)
    pipeline_id = submit(signing_server, gated.url("coffee"), receiver.notify_url(channel))
    trigger = hinted_trigger(pipeline_id, channel, poll_interval=60)  # polling alone would take 60 s
    event, elapsed = await run_until_event(trigger, open_gate=gated.open)
    assert event["status"] == "success", event
    assert elapsed < 30, f"resumed {elapsed:.1f} s after the pipeline could start: not by the webhook"
    assert status_reads(signing_server, pipeline_id) == 1, "one read, made when the webhook came"
    (delivery,) = webhook_deliveries(signing_server, pipeline_id)
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [202]


async def test_a_lost_webhook_costs_only_the_fallback_poll(signing_server, gated, conns):
    channel = channel_for_task("feed", "lost_webhook", "batch", 0)
    # Nothing listens there: every delivery attempt fails, and LEAPI gives up.
    pipeline_id = submit(
        signing_server, gated.url("chelsea"), f"http://127.0.0.1:9/leapi-webhooks/v1/{channel}"
    )
    event, _ = await run_until_event(
        hinted_trigger(pipeline_id, channel, poll_interval=3), open_gate=gated.open
    )
    assert event["status"] == "success", event


async def test_a_forged_hint_for_a_running_pipeline_changes_nothing(
    signing_server, gated, receiver, conns, webhook_settings
):
    channel = channel_for_task("feed", "forged_hint", "batch", 0)
    pipeline_id = submit(signing_server, gated.url("astronaut"), receiver.notify_url(channel))
    publisher = HintPublisher(location=webhook_settings.redis, ttl_s=60)
    try:
        # Someone holding the URL (or a bug) says it is done, and says so for ids the task never submitted.
        await publisher.publish(channel, pipeline_id)
        await publisher.publish(channel, 123456789)
    finally:
        await publisher.aclose()
    trigger = hinted_trigger(pipeline_id, channel, poll_interval=60)
    # The gate opens 3 s into the wait: the forged hint has been read (and found PROCESSING) by then.
    event, elapsed = await run_until_event(trigger, open_gate=gated.open, after=3)
    assert event["status"] == "success" and event["failed_ids"] == [], event
    assert elapsed < 30
    assert status_reads(signing_server, pipeline_id) == 2, "the forged hint's read, then the webhook's"
    assert status_reads(signing_server, 123456789) == 0, "ids not waited for are never read"


async def test_redis_down_during_the_wait_falls_back_to_polling(
    signing_server, gated, receiver, conns, redis_server
):
    channel = channel_for_task("feed", "redis_down", "batch", 0)
    pipeline_id = submit(signing_server, gated.url("coffee"), receiver.notify_url(channel))
    redis_server.stop()
    try:
        event, _ = await run_until_event(
            hinted_trigger(pipeline_id, channel, poll_interval=3), open_gate=gated.open
        )
    finally:
        redis_server.start()
    assert event["status"] == "success", event


# -- waiting for enough (the catalog's batches): hints alone decide, no read -----------------------------


def enough_trigger(
    pipeline_ids: list[int], channel: str, *, min_finished: int, rearm_ids=(), not_before=None
) -> LeapiPipelineTrigger:
    return LeapiPipelineTrigger(
        pipeline_ids=pipeline_ids,
        end_time=time.time() + 120,
        poll_interval=60,
        min_finished=min_finished,
        not_before=not_before,
        webhook_hints=WebhookHintSource(channel=channel).serialize(),
        rearm_ids=rearm_ids,
    )


async def publish(settings, channel: str, *pipeline_ids: int) -> list[bool]:
    publisher = HintPublisher(location=settings.redis, ttl_s=60)
    try:
        return [await publisher.publish(channel, pipeline_id) for pipeline_id in pipeline_ids]
    finally:
        await publisher.aclose()


async def next_event(trigger: LeapiPipelineTrigger, timeout: float) -> dict | None:
    events = trigger.run()
    try:
        event = await asyncio.wait_for(anext(events), timeout=timeout)
    except TimeoutError:
        return None
    finally:
        await events.aclose()
    return validate_pipeline_event(event.payload)


async def test_waiting_for_enough_fires_on_the_hinted_prefix_without_a_read(
    signing_server, conns, webhook_settings
):
    channel = channel_for_task("feed", "enough", "batch", 0)
    ids = [900_001, 900_002, 900_003, 900_004, 900_005]  # unknown to the server: a read would show
    await publish(webhook_settings, channel, 900_001, 900_003, 900_004)
    assert await next_event(enough_trigger(ids, channel, min_finished=3), 2) is None, "a gap at 900_002"
    events = asyncio.ensure_future(next_event(enough_trigger(ids, channel, min_finished=3), 30))
    await asyncio.sleep(0.5)
    published = time.monotonic()
    await publish(webhook_settings, channel, 900_002)
    event = await events
    assert event is not None and time.monotonic() - published < 1.5
    assert event["status"] == "ready" and event["hinted"] is True
    assert event["ready_through"] == 900_004, "the longest hinted prefix, not just min_finished"
    assert event["pending_ids"] == ids
    assert sum(status_reads(signing_server, pid) for pid in ids) == 0, "hints alone: no status read"


async def test_the_last_few_pending_need_only_be_all_hinted(signing_server, conns, webhook_settings):
    channel = channel_for_task("feed", "last_few", "batch", 0)
    await publish(webhook_settings, channel, 900_011, 900_012)
    event = await next_event(enough_trigger([900_011, 900_012], channel, min_finished=5), 10)
    assert event is not None and event["ready_through"] == 900_012 and event["hinted"]


async def test_rearmed_hints_count_again_and_not_before_holds_the_event(
    signing_server, conns, webhook_settings
):
    channel = channel_for_task("feed", "rearm", "batch", 0)
    ids = [900_021, 900_022]
    assert await publish(webhook_settings, channel, 900_021, 900_022) == [True, True]
    # The task read 900_022 and found it running: handed back, its hint no longer counts ...
    trigger = enough_trigger(ids, channel, min_finished=2, rearm_ids=[900_022])
    assert await next_event(trigger, 2) is None
    # ... and its true webhook is queued again, not dropped as a duplicate.
    assert await publish(webhook_settings, channel, 900_022) == [True]
    started = time.time()
    event = await next_event(enough_trigger(ids, channel, min_finished=2, not_before=started + 2), 10)
    assert event is not None and event["ready_through"] == 900_022
    assert time.time() - started >= 2, "no event before not_before"
