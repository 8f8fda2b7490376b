"""``leapi.AsyncClient`` against a real ``leapi-server`` (and respx for the order of a poll round's reads)."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest
import respx

import leapi
from devkit.server import RunningServer
from leapi.errors import LeapiAuthError, LeapiNotFoundError, LeapiPipelineFailedError
from leapi.models import PipelineRequest, PipelineStatus

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
        pipelines = await client.wait(ids, **FAST)
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
async def test_a_poll_round_reads_in_submission_order_and_stops_at_the_first_running(slept):
    """Pipelines 1-3 finish at once, 4 after two more rounds: the first round reads 1, 2, 3 and stops at
    4; the next rounds read 4 alone. Five reads for four pipelines, not one per pipeline per round."""
    reads: list[int] = []
    rounds_of_4 = iter(["PROCESSING", "PROCESSING", "DONE"])

    def answer(request: httpx.Request) -> httpx.Response:
        pipeline_id = int(request.url.path.rsplit("/", 1)[1])
        reads.append(pipeline_id)
        status = next(rounds_of_4) if pipeline_id == 4 else "DONE"
        return httpx.Response(200, json={"pipeline": {"id": pipeline_id, "status": status}})

    respx.get(url__regex=r"https://leapi\.test/v1/pipeline/\d+").mock(side_effect=answer)
    async with leapi.AsyncClient(api_key="k", base_url="https://leapi.test") as client:
        pipelines = await client.wait([1, 2, 3, 4, 5])
    assert [p.id for p in pipelines] == [1, 2, 3, 4, 5]
    assert reads == [1, 2, 3, 4, 4, 4, 5]
    assert len(slept) == 2, "a gap before each of the two later rounds"
