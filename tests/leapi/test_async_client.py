"""``leapi.AsyncClient`` against a real ``leapi-server`` (and respx for a poll round's concurrency)."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest
import respx

import leapi
from leapi.errors import LeapiAuthError, LeapiNotFoundError, LeapiPipelineFailedError
from leapi.models import PipelineRequest, PipelineStatus
from tests.support.server import RunningServer

OPERATION = {"op": "preset/realestate", "width": 180, "image_format": "JPEG"}
FAST = {"poll_interval": 0.3, "initial_poll_interval": 0.05, "timeout": 60}


def async_client_for(server: RunningServer, **overrides: object) -> leapi.AsyncClient:
    settings = {"api_key": server.api_key, "base_url": server.base_url} | overrides
    return leapi.AsyncClient(**settings)  # type: ignore[arg-type]


async def test_submit_wait_and_download_a_batch_concurrently(leapi_server, source_photos, tmp_path):
    names = ("burger.jpg", "cat.jpg", "rocket.jpg")
    async with async_client_for(leapi_server) as client:
        before = leapi_server.used_credits()
        accepted = await asyncio.gather(
            *(client.submit(PipelineRequest.build(source_photos[name], [OPERATION])) for name in names)
        )
        ids = [pipeline.id for pipeline in accepted]
        pipelines = await client.wait(ids, max_concurrency=2, **FAST)
        assert [p.id for p in pipelines] == ids and {p.status for p in pipelines} == {PipelineStatus.DONE}
        results = [leapi.result_files(p)[0][0] for p in pipelines]
        verified = await asyncio.gather(
            *(client.download_result(result, tmp_path / result.file_name) for result in results)
        )
    assert leapi_server.used_credits() == before + 3
    for result, check in zip(results, verified, strict=True):
        data = (tmp_path / result.file_name).read_bytes()
        assert check.sha256 == hashlib.sha256(data).hexdigest()
        assert (check.width, check.height) == (result.width, result.height) and check.format == "JPEG"
    assert max(check.width for check in verified) == 180


async def test_one_id_gives_one_pipeline_and_failures_can_raise(leapi_server, source_photos, source_server):
    async with async_client_for(leapi_server) as client:
        good = await client.submit(PipelineRequest.build(source_photos["cat.jpg"], [OPERATION]))
        assert (await client.wait(good.id, **FAST)).status is PipelineStatus.DONE
        bad = await client.submit(PipelineRequest.build(f"{source_server}/missing.jpg", [OPERATION]))
        with pytest.raises(LeapiPipelineFailedError, match="404") as info:
            await client.wait([good.id, bad.id], raise_on_error=True, **FAST)
    assert info.value.pipeline_ids == [bad.id]


async def test_errors_and_idempotent_resubmits(leapi_server, source_photos):
    async with async_client_for(leapi_server, api_key="wrong-key") as wrong:
        with pytest.raises(LeapiAuthError, match="401"):
            await wrong.get_pipeline(1)
    request = PipelineRequest.build(source_photos["astronaut.png"], [OPERATION])
    async with async_client_for(leapi_server) as client:
        with pytest.raises(LeapiNotFoundError):
            await client.get_pipeline(987_654_321)
        first = await client.submit(request, idempotency_key="async-same-key-1")
        again = await client.submit(request, idempotency_key="async-same-key-1")
    # (docs-only mode: no Idempotency-Key extension, so the same key is a second pipeline)
    assert (again.id != first.id) if leapi_server.docs_only else (again.id == first.id)


@respx.mock
async def test_a_poll_round_is_concurrent_but_bounded(slept):
    in_flight = peak = 0

    async def slow_done(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        pipeline_id = int(request.url.path.rsplit("/", 1)[1])
        return httpx.Response(200, json={"pipeline": {"id": pipeline_id, "status": "DONE"}})

    respx.get(url__regex=r"https://leapi\.test/v1/pipeline/\d+").mock(side_effect=slow_done)
    async with leapi.AsyncClient(api_key="k", base_url="https://leapi.test") as client:
        pipelines = await client.wait(list(range(1, 41)), max_concurrency=5)
    assert [p.id for p in pipelines] == list(range(1, 41))
    assert 1 < peak <= 5 and slept == []
