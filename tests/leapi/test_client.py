"""``leapi.Client`` against a real ``leapi-server``: submit, wait, usage, downloads, errors, limits, and
idempotent resubmits (one lost answer is played by respx in front of the real server)."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx
from PIL import Image

import leapi
from devkit.server import RunningServer, running_server
from devkit.sources import GatedPhotos, serve_gated_photos
from leapi.constants import IDEMPOTENT_REPLAY_HEADER
from leapi.errors import (
    LeapiAuthError,
    LeapiNotFoundError,
    LeapiPipelineFailedError,
    LeapiRateLimitError,
    LeapiRejectedError,
    LeapiWaitTimeoutError,
)
from leapi.idempotency import ADVERTISED
from leapi.models import PipelineRequest, PipelineStatus

OPERATION = {"op": "preset/marketplace", "width": 200, "image_format": "JPEG", "quality": 80}
#: Fast polls: the server finishes a 200 px image in well under a second.
FAST = {"poll_interval": 0.3, "initial_poll_interval": 0.05, "timeout": 60}


def request_for(*urls: str, **options: object) -> PipelineRequest:
    return PipelineRequest.build(list(urls), [OPERATION], **options)  # type: ignore[arg-type]


def client_for(server: RunningServer, **overrides: object) -> leapi.Client:
    settings = {"api_key": server.api_key, "base_url": server.base_url} | overrides
    return leapi.Client(**settings)  # type: ignore[arg-type]


def used_credits(server: RunningServer) -> int:
    # (read by the test, not the client: in docs-only mode the usage body has no shape a client may rely on)
    return server.used_credits()


def test_submit_wait_and_download_one_image(leapi_server, source_photos, tmp_path):
    before = used_credits(leapi_server)
    with client_for(leapi_server) as leapi_client:
        accepted = leapi_client.submit(request_for(source_photos["burger.jpg"]))
        pipeline = leapi_client.wait(accepted.id, **FAST)
        assert pipeline.id == accepted.id and pipeline.status is PipelineStatus.DONE
        files, failed = leapi.result_files(pipeline)
        assert failed == {} and len(files) == 1
        (result,) = files
        assert result.file_name == f"burger__marketplace__{pipeline.id}.jpg"
        assert (result.width, result.height, result.mime) == (200, 133, "image/jpeg")
        assert result.expiry_is_exact, "leapi-server's tmp_url states its expiry"
        verified = leapi_client.download_result(result, tmp_path / result.file_name)
    written = (tmp_path / result.file_name).read_bytes()
    assert verified.sha256 == hashlib.sha256(written).hexdigest() and verified.byte_count == len(written)
    assert (verified.width, verified.height, verified.format, verified.mime) == (
        200,
        133,
        "JPEG",
        "image/jpeg",
    )
    with Image.open(tmp_path / result.file_name) as image:
        assert image.size == (200, 133)
    assert [p.name for p in tmp_path.iterdir()] == [result.file_name], "no partial file is left"
    assert used_credits(leapi_server) == before + 1, "one source URL, one credit"
    # leapi-server advertises idempotent submits; in docs-only mode nothing is advertised, so nothing known.
    assert ADVERTISED.get(leapi_server.base_url) is (None if leapi_server.docs_only else True)


def test_wait_for_many_keeps_their_order_and_reports_failures(leapi_server, source_photos, source_server):
    with client_for(leapi_server) as leapi_client:
        good = [leapi_client.submit(request_for(source_photos[n])).id for n in ("cat.jpg", "rocket.jpg")]
        bad = leapi_client.submit(request_for(f"{source_server}/no-such-image.jpg")).id
        ids = [good[0], bad, good[1]]
        pipelines = leapi_client.wait(ids, **FAST)
        assert [p.id for p in pipelines] == ids
        assert [p.status for p in pipelines] == [
            PipelineStatus.DONE,
            PipelineStatus.ERROR,
            PipelineStatus.DONE,
        ]
        with pytest.raises(LeapiPipelineFailedError, match=f"{bad}: .*404") as info:
            leapi_client.wait(ids, **FAST, raise_on_error=True)
    assert info.value.pipeline_ids == [bad] and list(info.value.errors) == [bad]


@pytest.fixture
def gated_photo(tmp_path: Path) -> Iterator[GatedPhotos]:
    """One photograph served only once opened: its pipeline stays PROCESSING until then."""
    with serve_gated_photos(tmp_path, ["chelsea"]) as photo:
        yield photo


def test_a_wait_that_runs_out_names_what_is_pending_and_a_later_wait_collects_it(leapi_server, gated_photo):
    url = gated_photo.url("chelsea")
    with client_for(leapi_server) as leapi_client:
        pipeline_id = leapi_client.submit(request_for(url)).id
        with pytest.raises(LeapiWaitTimeoutError, match="still PROCESSING") as info:
            leapi_client.wait([pipeline_id], timeout=0.5, poll_interval=0.1, initial_poll_interval=0.1)
        assert info.value.pending_ids == [pipeline_id]
        gated_photo.open()
        assert leapi_client.wait(pipeline_id, **FAST).status is PipelineStatus.DONE


def test_errors_of_a_real_server(leapi_server, source_photos, slept):
    before = used_credits(leapi_server)
    with (
        client_for(leapi_server, api_key="wrong-key") as wrong,
        pytest.raises(LeapiAuthError, match="HTTP 401") as auth,
    ):
        wrong.get_usage()
    assert auth.value.status_code == 401
    with client_for(leapi_server) as leapi_client:
        with pytest.raises(LeapiNotFoundError):
            leapi_client.get_pipeline(987_654_321)
        # Valid for the wire contract, refused by this server: it has no other sink than temp_store.
        with pytest.raises(LeapiRejectedError, match="temp_store") as rejected:
            leapi_client.submit(request_for(source_photos["cat.jpg"], temp_store=False))
    # (docs-only mode answers every REJECTED with HTTP 200, as the docs show it; the body decides)
    assert rejected.value.status_code == (200 if leapi_server.docs_only else 400)
    assert not rejected.value.rate_limited
    assert slept == [], "none of these is retried"
    assert used_credits(leapi_server) == before, "refusals cost nothing"


def test_quota_and_rate_limit_refusals(source_photos, slept):
    with (
        running_server(
            extra_args=("--workers", "1", "--rate-limit-per-minute", "3", "--monthly-quota", "2")
        ) as server,
        # (refusals are retried for a time budget, not a count: a 30 s budget outlasts one Retry-After)
        client_for(server, rate_limit_budget=30) as leapi_client,
    ):
        for name in ("cat.jpg", "rocket.jpg"):
            leapi_client.submit(request_for(source_photos[name]))
        with pytest.raises(LeapiRejectedError) as quota:
            leapi_client.submit(request_for(source_photos["burger.jpg"]))
        assert quota.value.status_code == 402 and not quota.value.rate_limited
        assert slept == [], "quota refusals are final"
        with pytest.raises(LeapiRateLimitError, match="rate limited on all 2 attempts") as limited:
            leapi_client.submit(request_for(source_photos["burger.jpg"]))
        assert limited.value.status_code == 429 and limited.value.rate_limited
        assert limited.value.retry_after is not None and 0 < limited.value.retry_after <= 60
        assert len(slept) == 1 and slept[0] >= limited.value.retry_after, "Retry-After was honoured"
        assert leapi_client.get_usage().used == 2


def test_resubmitting_with_the_same_key_returns_the_first_pipeline(leapi_server, source_photos):
    request = request_for(source_photos["astronaut.png"])
    key = leapi.derive_idempotency_key(request, "test_client", "same-key")
    before = used_credits(leapi_server)
    with client_for(leapi_server) as leapi_client:
        first = leapi_client.submit(request, idempotency_key=key)
        again = leapi_client.submit(request, idempotency_key=key)
        other = leapi_client.submit(request)
    if leapi_server.docs_only:
        # The docs promise no Idempotency-Key: the header is ignored, each submit is a pipeline and a
        # credit. (Which is why the operators and the catalog keep their own records of what they submitted.)
        assert len({first.id, again.id, other.id}) == 3
        assert used_credits(leapi_server) == before + 3
        return
    assert again.id == first.id and other.id != first.id
    assert used_credits(leapi_server) == before + 2


def _forward(request: httpx.Request) -> httpx.Response:
    """Send ``request`` to the real server with urllib (respx intercepts httpx only)."""
    forwarded = urllib.request.Request(
        str(request.url), data=request.content, headers=dict(request.headers), method=request.method
    )
    with urllib.request.urlopen(forwarded, timeout=30) as answer:
        return httpx.Response(answer.status, headers=dict(answer.headers), content=answer.read())


def test_a_lost_submit_answer_is_retried_without_paying_twice(leapi_server, source_photos, slept):
    """The server creates (and charges) the pipeline, its answer is lost on the way back: the client learns
    that the server dedupes, sends the same Idempotency-Key again and gets that pipeline back."""
    created: list[int] = []
    answers: list[httpx.Response] = []

    def lose_the_first_answer(request: httpx.Request) -> httpx.Response:
        answer = _forward(request)
        answers.append(answer)
        if len(answers) == 1:
            created.append(json.loads(answer.content)["pipeline"]["id"])
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return answer

    before = used_credits(leapi_server)
    with respx.mock(assert_all_called=False) as router:
        post = router.post(f"{leapi_server.base_url}/v1/pipeline").mock(side_effect=lose_the_first_answer)
        router.route(host="127.0.0.1").pass_through()
        with client_for(leapi_server) as leapi_client:
            if leapi_server.docs_only:
                # No idempotency without the extension: resubmitting blindly could charge twice, so the
                # client reports the uncertainty and the caller's records decide (the operators' and the
                # catalog's records of accepted pipelines).
                with pytest.raises(leapi.LeapiSubmitUncertainError, match="may have been created"):
                    leapi_client.submit(request_for(source_photos["cat.jpg"]))
                assert post.call_count == 1 and used_credits(leapi_server) == before + 1
                return
            pipeline = leapi_client.submit(request_for(source_photos["cat.jpg"]))
    assert pipeline.id == created[0]
    assert post.call_count == 2
    assert answers[1].headers.get(IDEMPOTENT_REPLAY_HEADER) == "true"
    assert used_credits(leapi_server) == before + 1, "charged once"


def test_without_idempotency_a_lost_answer_is_reported_not_repeated(leapi_server, source_photos, slept):
    def lose_every_answer(request: httpx.Request) -> httpx.Response:
        _forward(request)
        raise httpx.ReadTimeout("the answer was lost", request=request)

    with respx.mock(assert_all_called=False) as router:
        post = router.post(f"{leapi_server.base_url}/v1/pipeline").mock(side_effect=lose_every_answer)
        router.route(host="127.0.0.1").pass_through()
        with (
            client_for(leapi_server, idempotency="never") as leapi_client,
            pytest.raises(leapi.LeapiSubmitUncertainError, match="may have been created"),
        ):
            leapi_client.submit(request_for(source_photos["cat.jpg"]))
    assert post.call_count == 1
