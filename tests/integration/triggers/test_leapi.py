"""LeapiPipelineTrigger: serialization round trip, one event per outcome, many ids in one trigger, reads
in submission order, the partial (``ready``) mode, ``not_before``, and the event's validation.

Outcomes a real server produces on demand (DONE, ERROR, unknown id) run against ``leapi-server``; a poll
storm of 503s, a pipeline that never finishes and exact read sequences use respx. The waits between
rounds are observed through the trigger's own seam (:meth:`LeapiPipelineTrigger.wait_for_next_round`,
where a webhook hint could end a wait): a subclass records them instead of sleeping.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from typing import Any

import httpx
import pytest
import respx

from devkit.server import RunningServer
from leapi import AsyncClient
from leapi_provider.exceptions import LeapiTriggerEventError
from leapi_provider.triggers.leapi import LeapiPipelineTrigger, earliest_resume, validate_pipeline_event

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
        not_before=1_800_000_000.0,
        started_at=1_799_999_990.0,
        min_finished=2,
    )
    classpath, kwargs = trigger.serialize()
    json.dumps(kwargs)  # the triggerer stores kwargs as JSON
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["pipeline_ids"] == [3, 4]
    assert kwargs["end_time"] == 1_900_000_000.5
    assert (kwargs["not_before"], kwargs["started_at"], kwargs["min_finished"]) == (1.8e9, 1_799_999_990.0, 2)
    assert (kwargs["webhook_hints"], kwargs["rearm_ids"]) == (None, [])
    hinted = LeapiPipelineTrigger(
        pipeline_ids=[5, 6], end_time=1.0, webhook_hints={"channel": "c", "conn_id": "h"}, rearm_ids=["6"]
    )
    _, hinted_kwargs = hinted.serialize()
    assert (hinted_kwargs["webhook_hints"], hinted_kwargs["rearm_ids"]) == (
        {"channel": "c", "conn_id": "h"},
        [6],
    )
    with pytest.raises(ValueError, match="min_finished"):
        LeapiPipelineTrigger(pipeline_ids=[1], end_time=1.0, min_finished=0)
    with pytest.raises(ValueError, match="no pipeline id"):
        LeapiPipelineTrigger(pipeline_ids=[], end_time=1.0)


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


class RecordingTrigger(LeapiPipelineTrigger):
    """Records each wait between rounds instead of sleeping (the trigger's one place to wait)."""

    waits: list[float]

    async def wait_for_next_round(self, seconds: float) -> None:
        self.waits.append(seconds)


def recording(**kwargs: Any) -> RecordingTrigger:
    trigger = RecordingTrigger(**kwargs)
    trigger.waits = []
    return trigger


@pytest.fixture
def instant_backoff(monkeypatch) -> None:
    """The client's own backoffs (a retried 503) are not waited for either."""

    async def skip(self, seconds: float) -> None:
        return None

    monkeypatch.setattr(AsyncClient, "_sleep", skip)


@respx.mock
async def test_timeout_event_at_the_wall_clock_deadline(fake_conn):
    respx.get(f"{FAKE}/v1/pipeline/5").respond(200, json={"pipeline": {"id": 5, "status": "PROCESSING"}})
    trigger = recording(pipeline_ids=[5], end_time=time.time() - 1, leapi_conn_id=fake_conn)
    event = await first_event(trigger)
    assert event["status"] == "timeout" and event["pending_ids"] == [5]
    assert event["counts"]["PROCESSING"] == 1
    assert respx.calls.call_count == 1, "polls once (it may have finished), then honours the deadline"


@respx.mock
async def test_poll_interval_starts_short_and_backs_off(fake_conn):
    route = respx.get(f"{FAKE}/v1/pipeline/6")
    processing = httpx.Response(200, json={"pipeline": {"id": 6, "status": "PROCESSING"}})
    route.side_effect = [processing] * 40 + [
        httpx.Response(200, json={"pipeline": {"id": 6, "status": "DONE"}})
    ]
    trigger = recording(
        pipeline_ids=[6],
        end_time=time.time() + 3600,
        leapi_conn_id=fake_conn,
        poll_interval=3,
        initial_poll_interval=0.5,
    )
    event = await first_event(trigger)
    waits = trigger.waits
    assert event["status"] == "success"
    assert len(waits) == 41, "one wait before each of the 41 polls"
    assert waits[0] == 0.5, "the first poll comes one short gap after the deferral"
    waited = 0.0
    for gap in waits:
        # Never more than a tenth of the time waited so far: the wait overshoots the pipeline by ~10%.
        assert gap <= max(0.5, 0.1 * waited) + 1e-9
        waited += gap
    assert waits == sorted(waits), "gaps only grow"
    assert waits[-1] == 3, "and stop growing at poll_interval"


@respx.mock
async def test_a_re_deferred_wait_goes_on_with_the_gaps_it_had_reached(fake_conn):
    respx.get(f"{FAKE}/v1/pipeline/6").respond(200, json={"pipeline": {"id": 6, "status": "DONE"}})
    trigger = recording(
        pipeline_ids=[6], end_time=time.time() + 3600, leapi_conn_id=fake_conn, poll_interval=15,
        started_at=time.time() - 100,
    )  # fmt: skip
    await first_event(trigger)
    assert trigger.waits[0] == pytest.approx(10, abs=0.1), "a tenth of the 100 s already waited"


@respx.mock
async def test_no_read_and_no_event_before_not_before(fake_conn):
    route = respx.get(f"{FAKE}/v1/pipeline/9").respond(200, json={"pipeline": {"id": 9, "status": "DONE"}})
    not_before = time.time() + 12
    trigger = recording(
        pipeline_ids=[9], end_time=time.time() + 60, leapi_conn_id=fake_conn, not_before=not_before
    )
    event = await first_event(trigger)
    assert event["status"] == "success" and route.call_count == 1
    assert trigger.waits[0] >= 11.9, "the first round waits for Airflow's reporting window to pass"


def test_earliest_resume_is_airflow_s_reporting_window_plus_a_margin(monkeypatch):
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "5")
    monkeypatch.setenv("AIRFLOW__LEAPI__RESUME_MARGIN", "10")
    assert earliest_resume(1000.0) == 1015.0
    monkeypatch.delenv("AIRFLOW__LEAPI__RESUME_MARGIN")
    assert earliest_resume(1000.0) == 1015.0, "the margin's default"


@respx.mock
async def test_transient_errors_are_tolerated_up_to_the_limit(fake_conn, instant_backoff):
    ok = respx.get(f"{FAKE}/v1/pipeline/7")
    ok.side_effect = [httpx.Response(503)] * 4 + [
        httpx.Response(200, json={"pipeline": {"id": 7, "status": "DONE"}})
    ]
    trigger = recording(pipeline_ids=[7], end_time=time.time() + 3600, leapi_conn_id=fake_conn)
    assert (await first_event(trigger))["status"] == "success"  # 2 rounds of (1 try + 1 hook retry) failed

    respx.get(f"{FAKE}/v1/pipeline/8").respond(503)
    trigger = recording(
        pipeline_ids=[8], end_time=time.time() + 3600, leapi_conn_id=fake_conn, max_consecutive_errors=3
    )
    event = await first_event(trigger)
    assert event["status"] == "error" and event["pending_ids"] == [8]
    assert "3 times in a row" in event["message"]


class FinishingInOrder:
    """A fake API whose pipelines 1..n finish one more per read round (in submission order); records
    every read."""

    def __init__(self, *, per_round: int) -> None:
        self.reads: list[int] = []
        self.per_round = per_round
        self.finished_through = 0

    def next_round(self) -> None:
        self.finished_through += self.per_round

    def __call__(self, request: httpx.Request) -> httpx.Response:
        pipeline_id = int(request.url.path.rsplit("/", 1)[1])
        self.reads.append(pipeline_id)
        status = "DONE" if pipeline_id <= self.finished_through else "PROCESSING"
        return httpx.Response(200, json={"pipeline": {"id": pipeline_id, "status": status}})


class AdvancingTrigger(RecordingTrigger):
    """Each wait between rounds lets the fake API finish more pipelines."""

    api: FinishingInOrder

    async def wait_for_next_round(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.api.next_round()


@respx.mock
async def test_reads_go_in_submission_order_and_stop_at_the_first_running(fake_conn):
    api = FinishingInOrder(per_round=10)
    respx.get(url__regex=rf"{FAKE}/v1/pipeline/\d+").mock(side_effect=api)
    trigger = AdvancingTrigger(
        pipeline_ids=list(range(1, 101)), end_time=time.time() + 600, leapi_conn_id=fake_conn
    )
    trigger.waits, trigger.api = [], api
    event = await first_event(trigger)
    assert event["status"] == "success" and event["counts"]["DONE"] == 100
    assert api.reads[:12] == [*range(1, 11), 11, 11], "ten done, then 11 still running ends the round"
    assert len(api.reads) <= 100 * 1.3, f"{len(api.reads)} reads for 100 pipelines"


@respx.mock
async def test_the_partial_mode_reads_one_pipeline_a_round_and_names_it(fake_conn):
    api = FinishingInOrder(per_round=4)
    respx.get(url__regex=rf"{FAKE}/v1/pipeline/\d+").mock(side_effect=api)
    trigger = AdvancingTrigger(
        pipeline_ids=list(range(1, 41)), end_time=time.time() + 600, leapi_conn_id=fake_conn, min_finished=10
    )
    trigger.waits, trigger.api = [], api
    event = await first_event(trigger)
    assert event["status"] == "ready" and event["ready_through"] == 10
    assert api.reads == [10, 10, 10], "only the 10th pending pipeline is read, once per round"
    assert event["counts"] == {"PROCESSING": 39, "DONE": 1, "ERROR": 0}
    assert len(json.dumps(event)) < 1000


def test_malformed_events_are_refused():
    good = {
        "status": "ready",
        "pipeline_ids": [1, 2],
        "counts": {"PROCESSING": 1, "DONE": 1, "ERROR": 0},
        "failed_ids": [],
        "pending_ids": [1],
        "ready_through": 2,
        "message": "m",
    }
    assert validate_pipeline_event(good) is good
    with pytest.raises(LeapiTriggerEventError, match="Unexpected event"):
        validate_pipeline_event({"status": "weird"})
    with pytest.raises(LeapiTriggerEventError, match="Unexpected event"):
        validate_pipeline_event(None)
    with pytest.raises(LeapiTriggerEventError, match="lacks 'pipeline_ids'"):
        validate_pipeline_event({"status": "success"})
    with pytest.raises(LeapiTriggerEventError, match="non-integer ids"):
        validate_pipeline_event(good | {"pending_ids": ["1"]})
    with pytest.raises(LeapiTriggerEventError, match="must name a watched pipeline"):
        validate_pipeline_event(good | {"ready_through": 7})


@respx.mock
async def test_the_rate_limit_is_waited_out_not_counted_as_a_failure(fake_conn, instant_backoff):
    """Each round's read spends its budget (the poll interval) on refusals, then the round ends; eight
    refusals take three rounds, more than max_consecutive_errors, and the wait still succeeds."""
    body = {"status": "REJECTED", "reason": "Too Many Requests. Rate limit exceeded."}
    refused = httpx.Response(429, json=body, headers={"Retry-After": "20"})
    route = respx.get(f"{FAKE}/v1/pipeline/4")
    route.side_effect = [refused] * 8 + [httpx.Response(200, json={"pipeline": {"id": 4, "status": "DONE"}})]
    trigger = recording(
        pipeline_ids=[4], end_time=time.time() + 3600, leapi_conn_id=fake_conn, max_consecutive_errors=2
    )
    event = await first_event(trigger)
    assert event["status"] == "success", "refusals of the account's rate limit are not polling failures"
    assert route.call_count == 9 and len(trigger.waits) >= 3
