"""LeapiPipelineTrigger: serialization round trip, one event per outcome, many ids in one trigger.

Outcomes a real server produces on demand (DONE, ERROR, unknown id) run against ``leapi-server``; a poll
storm of 503s and a pipeline that never finishes use respx.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time

import httpx
import pytest
import respx

from leapi import AsyncClient
from leapi_provider.triggers import leapi as trigger_module
from leapi_provider.triggers.leapi import LeapiPipelineTrigger, validate_pipeline_event
from tests.support.server import RunningServer

FAKE = "https://leapi.trigger.test"


def submit(server: RunningServer, urls: list[str], op: str = "preset/marketplace") -> int:
    with server.client() as client:
        answer = client.post(
            "/v1/pipeline", json={"source": {"http": {"url": urls}}, "operations": [{"op": op, "width": 64}]}
        )
    answer.raise_for_status()
    return answer.json()["pipeline"]["id"]


async def first_event(trigger: LeapiPipelineTrigger) -> dict:
    events = trigger.run()
    event = await asyncio.wait_for(anext(events), timeout=60)
    await events.aclose()
    return validate_pipeline_event(event.payload)


def test_serialization_round_trip_is_json_and_rebuilds_the_same_trigger():
    trigger = LeapiPipelineTrigger(
        pipeline_ids=[3, "4", 3],
        end_time=1_900_000_000.5,
        leapi_conn_id="c",
        poll_interval=20,
        max_concurrency=8,
    )
    classpath, kwargs = trigger.serialize()
    json.dumps(kwargs)  # the triggerer stores kwargs as JSON
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["pipeline_ids"] == [3, 4]
    assert kwargs["end_time"] == 1_900_000_000.5


async def test_success_for_many_pipelines_in_one_trigger(leapi_server, leapi_conn, source_photos):
    ids = [submit(leapi_server, [url]) for url in source_photos.values()]
    trigger = LeapiPipelineTrigger(
        pipeline_ids=ids, end_time=time.time() + 60, poll_interval=1, initial_poll_interval=0.2
    )
    event = await first_event(trigger)
    assert event["status"] == "success", event
    assert event["pipeline_ids"] == ids
    assert event["counts"] == {"PROCESSING": 0, "DONE": len(ids), "ERROR": 0}
    assert event["failed_ids"] == [] and event["pending_ids"] == []
    assert len(json.dumps(event)) < 1000, "the event stays small (no results lists)"


async def test_error_event_names_the_failed_pipeline_and_its_error(
    leapi_server, leapi_conn, source_photos, source_server
):
    good = submit(leapi_server, [source_photos["cat.jpg"]])
    bad = submit(leapi_server, [f"{source_server}/no-such-image.jpg"])
    trigger = LeapiPipelineTrigger(
        pipeline_ids=[good, bad], end_time=time.time() + 60, initial_poll_interval=0.2
    )
    event = await first_event(trigger)
    assert event["status"] == "error"
    assert event["failed_ids"] == [bad] and event["pending_ids"] == []
    assert event["counts"]["DONE"] == 1 and event["counts"]["ERROR"] == 1
    assert f"{bad}:" in event["message"]


async def test_unknown_pipeline_is_a_failure_not_a_hang(leapi_server, leapi_conn):
    trigger = LeapiPipelineTrigger(pipeline_ids=[987654321], end_time=time.time() + 30)
    event = await first_event(trigger)
    assert event["status"] == "error" and event["failed_ids"] == [987654321]
    assert "not found" in event["message"]


async def test_bad_api_key_ends_the_wait_at_once(leapi_server, leapi_conn_factory):
    conn_id = leapi_conn_factory("leapi_badkey", leapi_server.base_url, "wrong-key")
    trigger = LeapiPipelineTrigger(pipeline_ids=[1], end_time=time.time() + 30, leapi_conn_id=conn_id)
    event = await first_event(trigger)
    assert event["status"] == "error" and event["pending_ids"] == [1]
    assert "401" in event["message"]


@pytest.fixture
def fake_conn(leapi_conn_factory) -> str:
    return leapi_conn_factory("leapi_trigger_fake", FAKE, "k")


@pytest.fixture
def instant_sleep(monkeypatch):
    """Poll gaps and the client's backoffs are recorded instead of waited for."""
    gaps: list[float] = []

    async def record(seconds: float) -> None:
        gaps.append(seconds)

    monkeypatch.setattr(trigger_module, "_sleep", record)
    monkeypatch.setattr(AsyncClient, "_sleep", lambda self, s: record(s))
    return gaps


@respx.mock
async def test_timeout_event_at_the_wall_clock_deadline(fake_conn, instant_sleep):
    respx.get(f"{FAKE}/v1/pipeline/5").respond(200, json={"pipeline": {"id": 5, "status": "PROCESSING"}})
    trigger = LeapiPipelineTrigger(pipeline_ids=[5], end_time=time.time() - 1, leapi_conn_id=fake_conn)
    event = await first_event(trigger)
    assert event["status"] == "timeout" and event["pending_ids"] == [5]
    assert event["counts"]["PROCESSING"] == 1
    assert respx.calls.call_count == 1, "polls once (it may have finished), then honours the deadline"


@respx.mock
async def test_poll_interval_starts_short_and_backs_off(fake_conn, instant_sleep):
    route = respx.get(f"{FAKE}/v1/pipeline/6")
    processing = httpx.Response(200, json={"pipeline": {"id": 6, "status": "PROCESSING"}})
    route.side_effect = [processing] * 40 + [
        httpx.Response(200, json={"pipeline": {"id": 6, "status": "DONE"}})
    ]
    trigger = LeapiPipelineTrigger(
        pipeline_ids=[6],
        end_time=time.time() + 3600,
        leapi_conn_id=fake_conn,
        poll_interval=3,
        initial_poll_interval=0.5,
    )
    event = await first_event(trigger)
    assert event["status"] == "success"
    assert len(instant_sleep) == 41, "one gap before each of the 41 polls"
    assert instant_sleep[0] == 0.5, "the first poll comes one short gap after the deferral"
    waited = 0.0
    for gap in instant_sleep:
        # Never more than a tenth of the time waited so far: the wait overshoots the pipeline by ~10%.
        assert gap <= max(0.5, 0.1 * waited) + 1e-9
        waited += gap
    assert instant_sleep == sorted(instant_sleep), "gaps only grow"
    assert instant_sleep[-1] == 3, "and stop growing at poll_interval"


@respx.mock
async def test_transient_errors_are_tolerated_up_to_the_limit(fake_conn, instant_sleep):
    ok = respx.get(f"{FAKE}/v1/pipeline/7")
    ok.side_effect = [httpx.Response(503)] * 4 + [
        httpx.Response(200, json={"pipeline": {"id": 7, "status": "DONE"}})
    ]
    trigger = LeapiPipelineTrigger(pipeline_ids=[7], end_time=time.time() + 3600, leapi_conn_id=fake_conn)
    assert (await first_event(trigger))["status"] == "success"  # 2 rounds of (1 try + 1 hook retry) failed

    respx.get(f"{FAKE}/v1/pipeline/8").respond(503)
    trigger = LeapiPipelineTrigger(
        pipeline_ids=[8], end_time=time.time() + 3600, leapi_conn_id=fake_conn, max_consecutive_errors=3
    )
    event = await first_event(trigger)
    assert event["status"] == "error" and event["pending_ids"] == [8]
    assert "3 times in a row" in event["message"]


@respx.mock
async def test_polls_are_concurrent_but_bounded(fake_conn, instant_sleep):
    in_flight = 0
    peak = 0

    async def slow_done(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        pipeline_id = int(request.url.path.rsplit("/", 1)[1])
        return httpx.Response(200, json={"pipeline": {"id": pipeline_id, "status": "DONE"}})

    respx.get(url__regex=rf"{FAKE}/v1/pipeline/\d+").mock(side_effect=slow_done)
    ids = list(range(1, 101))
    trigger = LeapiPipelineTrigger(
        pipeline_ids=ids, end_time=time.time() + 60, leapi_conn_id=fake_conn, max_concurrency=10
    )
    event = await first_event(trigger)
    assert event["status"] == "success" and event["counts"]["DONE"] == 100
    assert 1 < peak <= 10


def test_malformed_events_are_refused():
    with pytest.raises(Exception, match="Unexpected event"):
        validate_pipeline_event({"status": "weird"})
    with pytest.raises(Exception, match="lacks"):
        validate_pipeline_event({"status": "success"})
