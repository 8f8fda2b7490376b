"""The triggerer dies while a LeapiPipelineTrigger waits (issue 6).

The triggerer keeps only what ``serialize()`` returned (as JSON in its database); after a crash another
triggerer rebuilds the trigger from those kwargs and runs it again. It must resume the same wait: the same
pipelines, the same wall-clock deadline, no new submission (the usage ledger does not move), and one event
that ``execute_complete`` accepts.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from devkit.server import RunningServer, running_server
from devkit.sources import GatedPhotos, serve_gated_photos
from leapi.models import MarketplacePreset
from leapi_provider.operators.leapi import STATE_PIPELINE_ID_KEY, LeapiSubmitPipelineOperator
from leapi_provider.triggers.leapi import LeapiPipelineTrigger, validate_pipeline_event
from tests.integration.operators.test_leapi import make_context

OPERATION = {"op": "preset/marketplace", "width": 600, "height": 400, "restoration_level": 6}
PHOTOS = ("coffee", "chelsea", "rocket")


@pytest.fixture
def gated_sources(tmp_path: Path) -> Iterator[GatedPhotos]:
    """The photographs behind a gate: the triggerer "crashes" land mid-wait however fast the machine is."""
    with serve_gated_photos(tmp_path, PHOTOS) as sources:
        yield sources


@pytest.fixture(scope="module")
def one_worker_server() -> Iterator[RunningServer]:
    with running_server(extra_args=("--workers", "1", "--rate-limit-per-minute", "0")) as server:
        yield server


@pytest.fixture
def conn_id(one_worker_server: RunningServer, leapi_conn_factory) -> str:
    return leapi_conn_factory("leapi_triggerer_crash", one_worker_server.base_url, one_worker_server.api_key)


def used(server: RunningServer) -> int:
    with server.client() as client:
        return client.get("/v1/me/usage/").json()["used"]


def statuses(server: RunningServer, ids: list[int]) -> list[str]:
    with server.client() as client:
        return [client.get(f"/v1/pipeline/{i}").json()["pipeline"]["status"] for i in ids]


def rebuilt_after_crash(trigger: LeapiPipelineTrigger) -> LeapiPipelineTrigger:
    """What a new triggerer does: import the classpath, call it with the kwargs read back from JSON."""
    classpath, kwargs = trigger.serialize()
    stored = json.loads(json.dumps(kwargs))
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)(**stored)


async def run_until_killed(trigger: LeapiPipelineTrigger, seconds: float) -> None:
    """Run the trigger for ``seconds`` and then kill it the way a dying triggerer does: its task is
    cancelled mid-wait (no event was produced)."""
    events = trigger.run()
    waiting = asyncio.ensure_future(anext(events))
    done, _ = await asyncio.wait({waiting}, timeout=seconds)
    assert not done, f"the trigger finished before the crash: {waiting.result().payload}"
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await events.aclose()


async def first_event(trigger: LeapiPipelineTrigger) -> dict[str, Any]:
    events = trigger.run()
    event = await asyncio.wait_for(anext(events), timeout=120)
    await events.aclose()
    return validate_pipeline_event(event.payload)


async def test_a_rebuilt_trigger_resumes_the_same_wait(
    one_worker_server: RunningServer, conn_id: str, gated_sources: GatedPhotos
) -> None:
    with one_worker_server.client() as client:
        ids = [
            client.post(
                "/v1/pipeline",
                json={"source": {"http": {"url": [gated_sources.url(name)]}}, "operations": [OPERATION]},
            ).json()["pipeline"]["id"]
            for name in (*PHOTOS, PHOTOS[0])
        ]
    charged = used(one_worker_server)
    original = LeapiPipelineTrigger(
        pipeline_ids=ids, end_time=2_000_000_000.0, leapi_conn_id=conn_id, poll_interval=0.5,
        initial_poll_interval=0.1,
    )  # fmt: skip

    await run_until_killed(original, seconds=0.6)
    assert set(statuses(one_worker_server, ids)) == {"PROCESSING"}, "the crash must come mid-wait"
    gated_sources.open()

    resumed = rebuilt_after_crash(original)
    assert resumed.serialize() == original.serialize()  # same ids, same wall-clock deadline
    event = await first_event(resumed)

    assert event["status"] == "success" and event["pipeline_ids"] == ids
    assert event["counts"] == {"PROCESSING": 0, "DONE": len(ids), "ERROR": 0}
    assert statuses(one_worker_server, ids) == ["DONE"] * len(ids)
    assert used(one_worker_server) == charged, "waiting again must not submit again"


async def test_a_deferred_operator_survives_two_triggerer_crashes(
    one_worker_server: RunningServer, conn_id: str, gated_sources: GatedPhotos
) -> None:
    """Operator defers; the triggerer dies twice (each new one rebuilds the trigger from the same stored
    kwargs); the third completes and ``execute_complete`` returns the summary of the one pipeline."""
    before = used(one_worker_server)
    context = make_context()
    operator = LeapiSubmitPipelineOperator(
        task_id="enhance",
        source_urls=[gated_sources.url(name) for name in PHOTOS],
        operations=[MarketplacePreset.model_validate(OPERATION)],
        deferrable=True,
        poll_interval=0.5,
        timeout=300,
        leapi_conn_id=conn_id,
    )
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    trigger = deferred.value.trigger
    pipeline_id = context["task_state_store"].get(STATE_PIPELINE_ID_KEY)
    assert trigger.pipeline_ids == [pipeline_id]

    await run_until_killed(rebuilt_after_crash(trigger), seconds=0.3)
    await run_until_killed(rebuilt_after_crash(trigger), seconds=0.3)
    assert statuses(one_worker_server, [pipeline_id]) == ["PROCESSING"]
    gated_sources.open()
    event = await first_event(rebuilt_after_crash(trigger))

    summary = getattr(operator, deferred.value.method_name)(context, event)
    assert summary["pipeline_id"] == pipeline_id and summary["status"] == "DONE" and summary["succeeded"] == 3
    assert used(one_worker_server) == before + 3, "one pipeline of three images, charged once"
