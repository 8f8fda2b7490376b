"""LeapiPipelineSensor: poke() against leapi-server, deferral to one trigger for many ids, event handling."""

from __future__ import annotations

import time
from typing import Any

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout, TaskDeferred

from devkit.server import wait_for_pipeline
from leapi.errors import LeapiError, LeapiPipelineFailedError
from leapi_provider.sensors.leapi import LeapiPipelineSensor
from leapi_provider.triggers.leapi import LeapiPipelineTrigger


def submit(server, url: str, *, wait: bool = True) -> int:
    with server.client() as client:
        answer = client.post(
            "/v1/pipeline",
            json={
                "source": {"http": {"url": url}},
                "operations": [{"op": "preset/marketplace", "width": 80}],
            },
        )
        pipeline_id = answer.json()["pipeline"]["id"]
        if wait:
            wait_for_pipeline(client, pipeline_id)
    return pipeline_id


def sensor(**kwargs: Any) -> LeapiPipelineSensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("poke_interval", 1)
    return LeapiPipelineSensor(**kwargs)


def test_poke_is_done_when_every_pipeline_is_done(leapi_server, leapi_conn, source_photos):
    ids = [submit(leapi_server, source_photos["cat.jpg"]), submit(leapi_server, source_photos["burger.jpg"])]
    result = sensor(pipeline_ids=str(ids)).poke({})
    assert isinstance(result, PokeReturnValue) and result.is_done
    assert result.xcom_value == {
        "pipeline_ids": ids,
        "counts": {"PROCESSING": 0, "DONE": 2, "ERROR": 0},
        "failed_ids": [],
    }


def test_poke_fails_on_an_error_pipeline_unless_told_otherwise(
    leapi_server, leapi_conn, source_photos, source_server
):
    good = submit(leapi_server, source_photos["cat.jpg"])
    bad = submit(leapi_server, f"{source_server}/404.jpg")
    with pytest.raises(LeapiPipelineFailedError, match=f"{bad}: .*404") as info:
        sensor(pipeline_ids=[good, bad]).poke({})
    assert info.value.pipeline_ids == [bad]
    lenient = sensor(pipeline_ids=f"{good},{bad}", fail_on_error=False).poke({})
    assert lenient.xcom_value["failed_ids"] == [bad]
    assert lenient.xcom_value["counts"] == {"PROCESSING": 0, "DONE": 1, "ERROR": 1}


def test_sync_sensor_waits_then_succeeds(leapi_server, leapi_conn, source_photos):
    pipeline_id = submit(leapi_server, source_photos["rocket.jpg"], wait=False)
    assert sensor(pipeline_ids=pipeline_id, poke_interval=0.2, timeout=60).execute({})["counts"]["DONE"] == 1


def test_deferrable_sensor_defers_one_trigger_for_all_ids(
    leapi_server, leapi_conn, source_photos, monkeypatch
):
    ids = [submit(leapi_server, source_photos["cat.jpg"]), submit(leapi_server, source_photos["burger.jpg"])]
    waiting = sensor(pipeline_ids=ids, deferrable=True, timeout=120, poke_interval=7)
    # Pretend one is still running so the sensor has to defer.
    monkeypatch.setattr(waiting, "poke", lambda context: False)
    started = time.time()
    with pytest.raises(TaskDeferred) as info:
        waiting.execute({})
    trigger = info.value.trigger
    assert isinstance(trigger, LeapiPipelineTrigger)
    assert trigger.pipeline_ids == ids and trigger.poll_interval == 7
    assert started + 120 <= trigger.end_time <= time.time() + 120


def test_deferrable_sensor_does_not_defer_when_already_done(leapi_server, leapi_conn, source_photos):
    pipeline_id = submit(leapi_server, source_photos["cat.jpg"])
    assert sensor(pipeline_ids=pipeline_id, deferrable=True).execute({})["pipeline_ids"] == [pipeline_id]


def event(status: str, **overrides: Any) -> dict[str, Any]:
    return {
        "status": status,
        "pipeline_ids": [1, 2],
        "counts": {"PROCESSING": 0, "DONE": 1, "ERROR": 1},
        "failed_ids": [2] if status == "error" else [],
        "pending_ids": [1, 2] if status == "timeout" else [],
        "message": "m",
        **overrides,
    }


def test_execute_complete_for_each_event():
    waiting = sensor(pipeline_ids=[1, 2], deferrable=True)
    assert waiting.execute_complete({}, event("success", counts={"PROCESSING": 0, "DONE": 2, "ERROR": 0}))[
        "counts"
    ] == {"PROCESSING": 0, "DONE": 2, "ERROR": 0}
    with pytest.raises(AirflowSensorTimeout, match="timed out"):
        waiting.execute_complete({}, event("timeout"))
    with pytest.raises(LeapiPipelineFailedError):
        waiting.execute_complete({}, event("error"))
    with pytest.raises(LeapiError, match="failed: m"):
        waiting.execute_complete({}, event("error", pending_ids=[1], failed_ids=[]))
    lenient = sensor(pipeline_ids=[1, 2], deferrable=True, fail_on_error=False)
    assert lenient.execute_complete({}, event("error"))["failed_ids"] == [2]


def test_bad_pipeline_ids_are_a_clear_error():
    with pytest.raises(ValueError, match="not a pipeline id"):
        sensor(pipeline_ids="abc").poke({})
