"""LeapiSubmitPipelineOperator and LeapiDownloadResultOperator, in the providers' unit-test style.

The operators run against the real ``leapi-server`` with a minimal task context (a TI that records XComs
and a dict-backed task state store); respx stands in only where a pipeline must stay PROCESSING on demand.
Whole-DAG runs (retries, deferral through the triggerer) are in ``tests/example_dags``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from PIL import Image

from devkit.server import running_server
from leapi.errors import (
    LeapiError,
    LeapiPipelineFailedError,
    LeapiResultExpiredError,
    LeapiResultMissingError,
    LeapiResultVerificationError,
    LeapiWaitTimeoutError,
)
from leapi.models import MarketplacePreset
from leapi_provider.hooks.leapi import LeapiHook
from leapi_provider.operators.leapi import (
    STATE_PIPELINE_ID_KEY,
    XCOM_FILES_KEY,
    XCOM_PIPELINE_ID_KEY,
    XCOM_PIPELINE_URL_KEY,
    LeapiDownloadResultOperator,
    LeapiPipelineLink,
    LeapiSubmitPipelineOperator,
)
from leapi_provider.triggers.leapi import LeapiPipelineTrigger

FAKE = "https://leapi.operator.test"


class FakeTI:
    dag_id = "test_dag"
    task_id = "submit"
    run_id = "manual__1"
    map_index = -1
    try_number = 1
    stats_tags: dict[str, str] = {}  # noqa: RUF012 - read only

    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


class DictStateStore:
    """The task state store's get/set contract, kept in a dict (survives "retries" of one test)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self.values[key] = value


def make_context(store: DictStateStore | None = None) -> dict[str, Any]:
    return {"ti": FakeTI(), "task_state_store": store if store is not None else DictStateStore()}


def usage_used(server) -> int:
    return server.used_credits()


def operator(**kwargs: Any) -> LeapiSubmitPipelineOperator:
    kwargs.setdefault("task_id", "submit")
    kwargs.setdefault("operations", [MarketplacePreset(width=96, height=64, image_format="JPEG")])
    kwargs.setdefault("poll_interval", 0.2)
    return LeapiSubmitPipelineOperator(**kwargs)


# -- arguments ------------------------------------------------------------------------------------------


def test_operations_are_validated_before_anything_is_submitted(leapi_conn_factory):
    """``__init__`` only assigns (templates render after it): the operations are checked once rendered,
    before the submit, with an error naming the field."""
    conn_id = leapi_conn_factory("leapi_op_validate", FAKE, "k")
    with respx.mock:
        post = respx.post(f"{FAKE}/v1/pipeline").respond(
            200, json={"status": "ACCEPTED", "pipeline": {"id": 1}}
        )
        bad_level = operator(
            source_urls="https://x/a.jpg",
            operations=[{"op": "preset/marketplace", "restoration_level": 11}],
            leapi_conn_id=conn_id,
        )
        assert bad_level.operations == [{"op": "preset/marketplace", "restoration_level": 11}], (
            "only assigned"
        )
        with pytest.raises(ValueError, match=r"operations\[0\] is invalid: .*restoration_level"):
            bad_level.execute(make_context())
        unknown = operator(
            source_urls="https://x/a.jpg", operations=[{"op": "preset/nope"}], leapi_conn_id=conn_id
        )
        with pytest.raises(ValueError, match="unknown operation"):
            unknown.execute(make_context())
        with pytest.raises(ValueError, match="non-empty list"):
            operator(source_urls="https://x/a.jpg", operations=[], leapi_conn_id=conn_id).execute(
                make_context()
            )
        assert post.call_count == 0, "nothing was submitted"
    op = operator(source_urls="https://x/a.jpg", operations=[MarketplacePreset(image_format="jpg")])
    assert op.build_request().to_wire()["operations"] == [
        {"op": "preset/marketplace", "image_format": "JPEG"}
    ]


def test_rendered_text_lists_are_accepted():
    op = operator(
        source_urls="['https://x/a.jpg', 'https://x/b.jpg']",
        operations='[{"op": "preset/print", "dpi": 300}]',
    )
    request = op.build_request()
    assert request.urls == ["https://x/a.jpg", "https://x/b.jpg"]
    assert request.to_wire()["operations"] == [{"op": "preset/print", "dpi": 300}]


def test_operator_declares_the_pipeline_link():
    op = operator(source_urls="https://x/a.jpg")
    assert any(isinstance(link, LeapiPipelineLink) for link in op.operator_extra_links)
    assert set(op.template_fields) == {"source_urls", "operations", "notify_url"}


# -- sync path against leapi-server ---------------------------------------------------------------------


def test_submit_and_wait_returns_a_small_summary_and_records_the_id(leapi_server, leapi_conn, source_photos):
    context = make_context()
    summary = operator(source_urls=[source_photos["burger.jpg"], source_photos["cat.jpg"]]).execute(context)
    pipeline_id = summary["pipeline_id"]
    assert summary == {
        "pipeline_id": pipeline_id,
        "status": "DONE",
        "images": 2,
        "succeeded": 2,
        "failed": 0,
        "pipeline_url": f"{leapi_server.base_url}/v1/pipeline/{pipeline_id}",
    }
    assert context["ti"].xcoms[XCOM_PIPELINE_ID_KEY] == pipeline_id
    assert context["ti"].xcoms[XCOM_PIPELINE_URL_KEY] == summary["pipeline_url"]
    assert context["task_state_store"].get(STATE_PIPELINE_ID_KEY) == pipeline_id


def test_without_waiting_the_summary_is_processing(leapi_server, leapi_conn, source_photos):
    summary = operator(source_urls=source_photos["rocket.jpg"], wait_for_completion=False).execute(
        make_context()
    )
    assert summary["status"] in ("PROCESSING", "DONE") and summary["pipeline_id"] > 0


def test_error_pipeline_fails_the_task_with_its_errors(leapi_server, leapi_conn, source_server):
    with pytest.raises(LeapiPipelineFailedError, match=r"ERROR.*404") as info:
        operator(source_urls=f"{source_server}/missing.jpg").execute(make_context())
    assert len(info.value.pipeline_ids) == 1


def test_a_retried_task_reconnects_instead_of_paying_again(leapi_server, leapi_conn, source_photos):
    store = DictStateStore()
    first = operator(source_urls=source_photos["astronaut.png"]).execute(make_context(store))
    used = usage_used(leapi_server)
    # The retry (same task instance, new try): the stored id is DONE, so nothing is submitted.
    second = operator(source_urls=source_photos["astronaut.png"]).execute(make_context(store))
    assert second["pipeline_id"] == first["pipeline_id"]
    assert usage_used(leapi_server) == used


def test_the_idempotency_key_covers_a_death_between_submit_and_record(
    leapi_server, leapi_conn, source_photos
):
    """The worker died after the API accepted but before the id reached the state store."""
    used = usage_used(leapi_server)
    first = operator(source_urls=source_photos["cat.jpg"], wait_for_completion=False).execute(make_context())
    # Fresh, empty store: the retry must find its pipeline through the deterministic Idempotency-Key.
    second = operator(source_urls=source_photos["cat.jpg"]).execute(make_context())
    if leapi_server.docs_only:
        # Without the extension (the real API promises none) only the task's records can tell: a death in
        # the instant between "accepted" and "recorded" costs a second pipeline and a second credit.
        assert second["pipeline_id"] != first["pipeline_id"]
        assert usage_used(leapi_server) == used + 2
        return
    assert second["pipeline_id"] == first["pipeline_id"]
    assert usage_used(leapi_server) == used + 1


def test_a_retry_after_an_error_submits_a_fresh_pipeline(leapi_server, leapi_conn, source_server):
    store = DictStateStore()
    broken = f"{source_server}/appears-later.jpg"
    with pytest.raises(LeapiPipelineFailedError):
        operator(source_urls=broken).execute(make_context(store))
    failed_id = store.get(STATE_PIPELINE_ID_KEY)
    with pytest.raises(LeapiPipelineFailedError):
        operator(source_urls=broken).execute(make_context(store))
    assert store.get(STATE_PIPELINE_ID_KEY) != failed_id, "an ERROR pipeline is resubmitted under a new key"


def test_sync_wait_times_out_with_a_reconnectable_error(leapi_conn_factory, monkeypatch):
    conn_id = leapi_conn_factory("leapi_op_fake", FAKE, "k")
    with respx.mock:
        respx.post(f"{FAKE}/v1/pipeline").respond(200, json={"status": "ACCEPTED", "pipeline": {"id": 31}})
        respx.get(f"{FAKE}/v1/pipeline/31").respond(
            200, json={"pipeline": {"id": 31, "status": "PROCESSING"}}
        )
        op = operator(source_urls="https://x/a.jpg", leapi_conn_id=conn_id, timeout=0.3, poll_interval=0.1)
        with pytest.raises(LeapiWaitTimeoutError, match="reconnects"):
            op.execute(make_context())


# -- deferrable path ------------------------------------------------------------------------------------


@pytest.fixture
def deferring(leapi_conn_factory):
    conn_id = leapi_conn_factory("leapi_op_defer", FAKE, "k")
    with respx.mock:
        post = respx.post(f"{FAKE}/v1/pipeline").respond(
            200, json={"status": "ACCEPTED", "pipeline": {"id": 41}}
        )
        get = respx.get(f"{FAKE}/v1/pipeline/41")
        get.respond(200, json={"pipeline": {"id": 41, "status": "PROCESSING"}})
        yield conn_id, post, get


def test_deferrable_operator_records_the_id_then_defers(deferring):
    conn_id, post, _ = deferring
    context = make_context()
    op = operator(
        source_urls="https://x/a.jpg", leapi_conn_id=conn_id, deferrable=True, timeout=600, poll_interval=15
    )
    started = time.time()
    with pytest.raises(TaskDeferred) as info:
        op.execute(context)
    trigger = info.value.trigger
    assert isinstance(trigger, LeapiPipelineTrigger)
    assert trigger.pipeline_ids == [41] and trigger.leapi_conn_id == conn_id and trigger.poll_interval == 15
    assert started + 600 <= trigger.end_time <= time.time() + 600
    # No event within Airflow's reporting window; the deferral itself is bounded past the trigger's end.
    assert trigger.not_before is not None and trigger.not_before > started
    assert info.value.timeout is not None and info.value.timeout.total_seconds() >= 600
    assert info.value.method_name == "execute_complete"
    assert context["ti"].xcoms[XCOM_PIPELINE_ID_KEY] == 41
    assert context["task_state_store"].get(STATE_PIPELINE_ID_KEY) == 41
    # A retry of the deferred task (e.g. its worker died before deferring) defers again, without a POST.
    with pytest.raises(TaskDeferred):
        op.execute(make_context(context["task_state_store"]))
    assert post.call_count == 1


def event(status: str, **overrides: Any) -> dict[str, Any]:
    payload = {
        "status": status,
        "pipeline_ids": [41],
        "counts": {
            "PROCESSING": 0,
            "DONE": 1 if status == "success" else 0,
            "ERROR": 1 if status == "error" else 0,
        },
        "failed_ids": [41] if status == "error" else [],
        "pending_ids": [41] if status == "timeout" else [],
        "message": "m",
    }
    return {**payload, **overrides}


def test_execute_complete_success_returns_the_summary(deferring):
    conn_id, _, get = deferring
    get.respond(
        200,
        json={
            "pipeline": {
                "id": 41,
                "status": "DONE",
                "source": {"http": {"url": ["u"]}},
                "results": [{"output_object": {"width": 1}}],
            }
        },
    )
    op = operator(source_urls="https://x/a.jpg", leapi_conn_id=conn_id, deferrable=True)
    summary = op.execute_complete(make_context(), event("success"))
    assert summary["status"] == "DONE" and summary["succeeded"] == 1 and summary["pipeline_id"] == 41


def test_execute_complete_error_fails_with_the_pipeline_errors(deferring):
    conn_id, _, get = deferring
    get.respond(200, json={"pipeline": {"id": 41, "status": "ERROR", "errors": ["bad image format"]}})
    op = operator(source_urls="https://x/a.jpg", leapi_conn_id=conn_id, deferrable=True)
    with pytest.raises(LeapiPipelineFailedError, match="bad image format"):
        op.execute_complete(make_context(), event("error"))


def test_execute_complete_timeout_and_polling_failure(deferring):
    conn_id, _, _ = deferring
    op = operator(source_urls="https://x/a.jpg", leapi_conn_id=conn_id, deferrable=True)
    with pytest.raises(LeapiWaitTimeoutError):
        op.execute_complete(make_context(), event("timeout"))
    with pytest.raises(LeapiError, match="failed: HTTP 401"):
        op.execute_complete(
            make_context(), event("error", pending_ids=[41], failed_ids=[], message="HTTP 401")
        )
    with pytest.raises(AirflowFailException, match="Unexpected event"):
        op.execute_complete(make_context(), {"status": "done?"})


# -- download ---------------------------------------------------------------------------------------------


def submitted(server, urls: list[str], op: dict[str, Any]) -> int:
    from devkit.server import wait_for_pipeline

    with server.client() as client:
        answer = client.post("/v1/pipeline", json={"source": {"http": {"url": urls}}, "operations": [op]})
        pipeline = wait_for_pipeline(client, answer.json()["pipeline"]["id"])
    return pipeline["id"]


def test_download_writes_verified_files_with_deterministic_names(
    leapi_server, leapi_conn, source_photos, tmp_path
):
    pipeline_id = submitted(
        leapi_server,
        [source_photos["burger.jpg"], source_photos["astronaut.png"]],
        {"op": "preset/print", "width": 300, "image_format": "PNG"},
    )
    context = make_context()
    download = LeapiDownloadResultOperator(
        task_id="dl", pipeline_id=str(pipeline_id), destination=f"file://{tmp_path}/out"
    )
    uris = download.execute(context)
    assert uris == [
        f"file://{tmp_path}/out/burger__print__{pipeline_id}-0.png",
        f"file://{tmp_path}/out/astronaut__print__{pipeline_id}-1.png",
    ]
    files = context["ti"].xcoms[XCOM_FILES_KEY]
    for uri, record in zip(uris, files, strict=True):
        path = Path(uri.removeprefix("file://"))
        data = path.read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["bytes"] == len(data)
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width == 300 == record["width"]
    assert not list((tmp_path / "out").glob(".*partial")), "no temp file left behind"

    # A retried task keeps what is there (overwrite=False) and reports the same facts.
    mtimes = [Path(u.removeprefix("file://")).stat().st_mtime_ns for u in uris]
    again = make_context()
    assert download.execute(again) == uris
    assert [Path(u.removeprefix("file://")).stat().st_mtime_ns for u in uris] == mtimes
    assert [r["sha256"] for r in again["ti"].xcoms[XCOM_FILES_KEY]] == [r["sha256"] for r in files]
    assert all(r["skipped_existing"] for r in again["ti"].xcoms[XCOM_FILES_KEY])


def test_download_of_a_partly_failed_pipeline(
    leapi_server, leapi_conn, source_photos, source_server, tmp_path
):
    pipeline_id = submitted(
        leapi_server,
        [source_photos["cat.jpg"], f"{source_server}/gone.jpg"],
        {"op": "preset/marketplace", "width": 120},
    )
    strict = LeapiDownloadResultOperator(
        task_id="dl", pipeline_id=pipeline_id, destination=ObjectStoragePath(f"file://{tmp_path}/a")
    )
    with pytest.raises(LeapiResultMissingError, match=r"result 1: .*404") as info:
        strict.execute(make_context())
    assert info.value.failed_indexes == [1]
    assert (tmp_path / "a" / f"cat__marketplace__{pipeline_id}-0.jpg").exists(), (
        "the good image was still copied"
    )
    lenient = LeapiDownloadResultOperator(
        task_id="dl", pipeline_id=pipeline_id, destination=f"file://{tmp_path}/b", allow_partial=True
    )
    assert len(lenient.execute(make_context())) == 1


def test_expired_result_names_the_pipeline_and_the_expiry(tmp_path, source_photos, leapi_conn_factory):
    with running_server(extra_args=("--workers", "1", "--temp-url-ttl", "1")) as server:
        conn_id = leapi_conn_factory("leapi_short_ttl", server.base_url, server.api_key)
        pipeline_id = submitted(
            server, [source_photos["cat.jpg"]], {"op": "preset/marketplace", "width": 100}
        )
        time.sleep(2.1)
        download = LeapiDownloadResultOperator(
            task_id="dl", pipeline_id=pipeline_id, destination=f"file://{tmp_path}", leapi_conn_id=conn_id
        )
        with pytest.raises(AirflowFailException) as info:  # no retry can fix it: fails at once
            download.execute(make_context())
    message = str(info.value)
    assert (
        f"pipeline {pipeline_id}" in message and "expired at 20" in message and "re-run the image" in message
    )
    expired = info.value.__cause__
    assert isinstance(expired, LeapiResultExpiredError)
    assert expired.pipeline_id == pipeline_id and expired.expired_at is not None
    assert "signature=" not in message


def test_download_refuses_an_image_of_the_wrong_size(leapi_conn_factory, tmp_path):
    import io

    conn_id = leapi_conn_factory("leapi_dl_fake", FAKE, "k")
    png = io.BytesIO()
    Image.new("RGB", (50, 40)).save(png, format="PNG")
    tmp_url = f"{FAKE}/tmp/x.png?expires={int(time.time()) + 600}&signature=s"
    body = {
        "pipeline": {
            "id": 51,
            "status": "DONE",
            "operations": [{"op": "preset/print"}],
            "results": [
                {
                    "input_object": {"basename": "x"},
                    "output_object": {
                        "tmp_url": tmp_url,
                        "width": 100,
                        "height": 80,
                        "mime": "image/png",
                        "ext": "png",
                    },
                }
            ],
        }
    }
    with respx.mock:
        respx.get(f"{FAKE}/v1/pipeline/51").respond(200, json=body)
        respx.get(tmp_url).respond(200, content=png.getvalue())
        download = LeapiDownloadResultOperator(
            task_id="dl", pipeline_id=51, destination=f"file://{tmp_path}", leapi_conn_id=conn_id
        )
        with pytest.raises(LeapiResultVerificationError, match="50x40 but the API reported 100x80"):
            download.execute(make_context())
    assert not any(tmp_path.iterdir()), "nothing unverified reaches the destination"


def test_download_needs_a_done_pipeline(leapi_conn_factory, tmp_path):
    conn_id = leapi_conn_factory("leapi_dl_fake2", FAKE, "k")
    with respx.mock:
        respx.get(f"{FAKE}/v1/pipeline/52").mock(
            return_value=httpx.Response(200, json={"pipeline": {"id": 52, "status": "PROCESSING"}})
        )
        download = LeapiDownloadResultOperator(
            task_id="dl", pipeline_id=52, destination=f"file://{tmp_path}", leapi_conn_id=conn_id
        )
        with pytest.raises(LeapiError, match="52 is PROCESSING, not DONE"):
            download.execute(make_context())


def test_hook_used_by_operators_is_the_connection_hook():
    assert (
        LeapiSubmitPipelineOperator(
            task_id="t", source_urls="https://x", operations=[{"op": "preset/print"}]
        ).hook.leapi_conn_id
        == LeapiHook.default_conn_name
    )
