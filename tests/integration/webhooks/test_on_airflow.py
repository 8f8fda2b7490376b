"""Webhooks and manifest events under a real Airflow (api-server, scheduler, dag-processor, triggerer;
LocalExecutor, and the CeleryExecutor for the operator's wait) started by :class:`devkit.airflow_stack.AirflowStack`, with a real Redis, ``leapi-server`` signing
its webhooks and moto (S3 and SQS) on 127.0.0.1.

1. The receiver is mounted on the api-server by installing the provider (its ``airflow.plugins`` entry
   point): forged and replayed POSTs are refused and queue nothing; a good one reaches a waiting consumer
   (latency measured); one that comes before anyone waits is kept.
2. ``LeapiSubmitPipelineOperator(webhook_conn_id=...)`` defers, and the webhook resumes it long before its
   60 s fallback poll, with one status read in the triggerer.
3. ``marketplace_feed_etl`` with ``LEAPI_FEED_SQS_QUEUE``: moto's S3 notifies SQS, the AssetWatcher's
   ``SqsSensorTrigger`` reads it, and ``marketplace_feed_arrivals`` starts one run per manifest write: two
   manifests landing together are two runs, a notification delivered twice is one, the same key written
   again is a new one; the first run succeeds by itself (the catalog DAGs run one at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import re
import statistics
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.airflow_stack import AirflowStack
from devkit.redis import RedisServer
from devkit.s3 import CREDENTIALS, REGION, MotoS3Server
from devkit.server import RunningServer, running_server
from devkit.sources import GatedPhotos, serve_directory, serve_gated_photos
from leapi.webhooks import generate_secret, signed_headers
from leapi_provider.webhooks.hints import WebhookHintSource, hint_keys
from leapi_provider.webhooks.hook import RedisLocation, WebhookSettings
from leapi_provider.webhooks.plugin import URL_PREFIX
from leapi_provider.webhooks.tokens import channel_for_task
from tests.e2e import connection_env
from tests.fixtures.airflow import REPO
from tests.fixtures.webhooks import webhook_conn_env

# (The first test of each executor also waits for the stack to start: minutes on a busy machine.)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SIGNING_SECRET = generate_secret()
API_KEY = "webhooks-key"
BUCKET = "leapi-events"
WAIT_DAG = "leapi_webhook_wait"
FEED_DAG = "marketplace_feed_etl"
ARRIVALS_DAG = "marketplace_feed_arrivals"

_WAIT_DAG_FILE = f'''
from datetime import datetime

from airflow.sdk import DAG

from leapi_provider.operators.leapi import LeapiSubmitPipelineOperator

with DAG(dag_id="{WAIT_DAG}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         params={{"url": ""}}):
    LeapiSubmitPipelineOperator(
        task_id="enhance",
        source_urls="{{{{ params.url }}}}",
        operations=[{{"op": "preset/marketplace", "width": 64}}],
        webhook_conn_id="leapi_webhooks_default",
        deferrable=True,
        poll_interval=60,
        timeout=600,
    )
'''


@dataclasses.dataclass
class World:
    stack: AirflowStack
    leapi: RunningServer
    moto: MotoS3Server
    redis: RedisServer
    settings: WebhookSettings
    gated: GatedPhotos
    sources: str
    queue_url: str
    tap_url: str

    def aws(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.moto.endpoint_url, region_name=REGION, **CREDENTIALS)


def _queues(moto: MotoS3Server) -> tuple[str, str]:
    """The watched queue and a test's tap queue, both notified by the bucket for ``incoming/*.parquet``."""
    import boto3

    kwargs = {"endpoint_url": moto.endpoint_url, "region_name": REGION, **CREDENTIALS}
    sqs, s3 = boto3.client("sqs", **kwargs), boto3.client("s3", **kwargs)
    urls = [sqs.create_queue(QueueName=name)["QueueUrl"] for name in ("feed-manifests", "feed-manifests-tap")]
    arns = [
        sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for u in urls
    ]
    s3.create_bucket(Bucket=BUCKET)
    rules = {
        "Key": {
            "FilterRules": [{"Name": "prefix", "Value": "incoming/"}, {"Name": "suffix", "Value": ".parquet"}]
        }
    }
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"], "Filter": rules} for arn in arns
            ]
        },
    )
    for url in urls:  # S3's s3:TestEvent, sent when the configuration is saved
        sqs.purge_queue(QueueUrl=url)
    return urls[0], urls[1]


@pytest.fixture(scope="module", params=["LocalExecutor", "CeleryExecutor"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[World]:
    """The stack per executor. The hand-off does not involve the executor (api-server -> Redis ->
    triggerer); the Celery run checks that a Celery worker builds the same URL and resumes the task, and
    so parses only that DAG (not ``dags/``: no feed DAGs, no SQS watcher polling in its triggerer)."""
    work = tmp_path_factory.mktemp("airflow-webhooks")
    dags = work / "test-dags"
    dags.mkdir()
    (dags / "leapi_webhook_wait.py").write_text(textwrap.dedent(_WAIT_DAG_FILE))
    local = request.param == "LocalExecutor"
    with contextlib.ExitStack() as cleanup:
        leapi = cleanup.enter_context(
            running_server(
                data_dir=work / "leapi-server",
                api_keys=(API_KEY,),
                extra_args=(
                    "--workers",
                    "2",
                    "--rate-limit-per-minute",
                    "0",
                    "--webhook-secret",
                    SIGNING_SECRET,
                ),
            )
        )
        gated = cleanup.enter_context(serve_gated_photos(work / "gated", ("coffee", "chelsea")))
        (work / "sources").mkdir()
        sources = cleanup.enter_context(serve_directory(work / "sources"))
        moto = MotoS3Server(work / "moto.log")
        moto.start()
        cleanup.callback(moto.stop)
        queue_url, tap_url = _queues(moto)
        stack = AirflowStack(
            home=work / "airflow",
            dags_folders=[REPO / "dags", dags] if local else [dags],
            executor=request.param,
            celery_workers=1,
        )
        settings = WebhookSettings(
            base_url=f"{stack.api_url}{URL_PREFIX}",
            token_secret="airflow-webhooks-token-secret-4f1d",
            redis=RedisLocation(port=redis_server.port),
            signing_secret=SIGNING_SECRET,
        )
        stack.extra_env.update(
            {
                **connection_env(leapi_url=leapi.base_url, api_key=API_KEY, s3_endpoint=moto.endpoint_url),
                **webhook_conn_env(settings, redis_server),
                "LEAPI_FEED_SQS_QUEUE": queue_url,
                "LEAPI_FEED_RESULTS": f"s3://{BUCKET}/results",
                "LEAPI_FEED_IMAGES": f"s3://{BUCKET}/cdn",
                "LEAPI_FEED_EXPORT": f"s3://{BUCKET}/export",
                # (the feed runs' batches wake on webhooks too: the catalog's path under a real Airflow)
                "LEAPI_FEED_WEBHOOKS_CONN_ID": "leapi_webhooks_default",
            }
        )
        cleanup.callback(stack.stop, raise_on_leftovers=False)
        stack.start()
        stack.set_pool("leapi", 4)
        for dag_id in (WAIT_DAG, FEED_DAG, ARRIVALS_DAG) if local else (WAIT_DAG,):
            stack.wait_for_dag(dag_id)
            stack.unpause(dag_id)
        yield World(stack, leapi, moto, redis_server, settings, gated, sources, queue_url, tap_url)


def leapi_body(pipeline_id: int) -> bytes:
    return json.dumps({"id": pipeline_id, "status": "DONE"}, separators=(",", ":")).encode()


# -- 1. the receiver on the api-server ----------------------------------------------------------------------


def local_only(world: World) -> None:
    if world.stack.executor != "LocalExecutor":
        pytest.skip("executor-independent: checked once, under the LocalExecutor")


async def test_the_receiver_on_the_api_server_refuses_forgeries_and_hands_hints_over_fast(
    world, webhook_conns
):
    local_only(world)
    channel = channel_for_task("receiver", "on_api_server", "check", 0)
    url = world.settings.notify_url(channel)
    forged_token = re.sub(r"token=[^&]+", "token=" + "A" * 32, url)
    body = leapi_body(1)
    async with httpx.AsyncClient(timeout=10) as client:
        refused = [
            (await client.post(forged_token, content=body, headers=signed_headers(SIGNING_SECRET, "m0", body))).status_code,
            (await client.post(url, content=body)).status_code,  # unsigned
            (await client.post(url, content=body, headers=signed_headers(generate_secret(), "m0", body))).status_code,
            (await client.post(url, content=body, headers=signed_headers(SIGNING_SECRET, "m0", body,
                                                                         timestamp=int(time.time()) - 3600))).status_code,
        ]  # fmt: skip
        assert refused == [403, 401, 401, 401]
        client_redis = world.redis.client()
        assert client_redis.keys(f"*{channel}*") == [], "nothing queued by a refused webhook"

        # Before anyone waits (the task has not deferred, the triggerer is down): kept until read.
        early = await client.post(url, content=body, headers=signed_headers(SIGNING_SECRET, "m1", body))
        assert early.status_code == 202 and early.json() == {"queued": True, "pipeline_id": 1}
        async with WebhookHintSource(channel=channel, conn_id=webhook_conns) as source:
            assert await source.wait_for_hints(5) == {1}

            latencies = []
            for pipeline_id in range(100, 120):
                waiter = asyncio.ensure_future(source.wait_for_hints(10))
                await asyncio.sleep(0.05)  # the consumer is blocked in BLPOP
                body = leapi_body(pipeline_id)
                started = time.perf_counter()
                answer = await client.post(
                    url, content=body, headers=signed_headers(SIGNING_SECRET, f"m{pipeline_id}", body)
                )
                assert await waiter == {pipeline_id}
                latencies.append(time.perf_counter() - started)
                assert answer.status_code == 202
    p95 = sorted(latencies)[int(len(latencies) * 0.95) - 1]
    print(f"\nreceiver on the api-server, POST -> consumer: median {statistics.median(latencies) * 1000:.1f} ms, "
          f"p95 {p95 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms ({len(latencies)} webhooks)")  # fmt: skip
    assert p95 < 1.0, latencies
    seen, _ = hint_keys(channel)
    assert client_redis.scard(seen) == 21
    client_redis.close()


# -- 2. a deferred operator woken by its webhook ----------------------------------------------------------


def _wait_for_task_state(
    stack: AirflowStack, dag_id: str, run_id: str, state: str, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(ti["state"] == state for ti in stack.task_instances(dag_id, run_id)):
            return
        stack.check_alive()
        time.sleep(0.5)
    raise AssertionError(f"no task of {run_id} reached {state}:\n{stack.run_report(dag_id, run_id)}")


def test_the_webhook_resumes_the_deferred_operator_long_before_its_fallback_poll(world):
    stack = world.stack
    run_id = stack.trigger(WAIT_DAG, {"url": world.gated.url("coffee")})
    _wait_for_task_state(stack, WAIT_DAG, run_id, "deferred")
    opened = time.monotonic()
    world.gated.open()
    assert stack.wait_for_run(WAIT_DAG, run_id, timeout=240) == "success"
    took = time.monotonic() - opened
    (ti,) = stack.task_instances(WAIT_DAG, run_id)
    pipeline_id = int(stack.api().get(
        f"/dags/{WAIT_DAG}/dagRuns/{run_id}/taskInstances/enhance/xcomEntries/pipeline_id"
    ).json()["value"])  # fmt: skip
    with world.leapi.client() as client:
        (delivery,) = client.get(f"/v1/pipeline/{pipeline_id}/webhooks").json()["deliveries"]
        pipeline = client.get(f"/v1/pipeline/{pipeline_id}").json()["pipeline"]
    assert [a["status_code"] for a in delivery["attempts"]] == [202], delivery
    assert pipeline["notify_url"].startswith(f"{world.settings.base_url}/v1/ti-")
    reads = len(re.findall(rf'"GET /v1/pipeline/{pipeline_id} HTTP', world.leapi.logs()))
    print(f"\nopen gate -> run success {took:.1f} s; status reads {reads - 1} (+1 by this test)")
    # Polling alone would first read 60 s after the deferral; the webhook came seconds after the gate.
    assert took < 50, f"{took:.1f} s: resumed by the fallback poll, not by the webhook"
    # Before deferring, in the trigger (woken by the hint), in execute_complete; + this test's read.
    assert reads <= 4, reads
    deferred = stack.deferred_task_instances(WAIT_DAG, run_id)
    assert deferred and all(entry["resumed"] for entry in deferred), deferred
    assert ti["state"] == "success"


# -- 3. a manifest landing in S3 starts its run -------------------------------------------------------------


def _manifest_bytes(world: World, count: int, prefix: str) -> bytes:
    import pyarrow.parquet as pq

    from devkit.catalog import sample_manifest, write_sample_images

    images = write_sample_images(_source_dir(world), count, long_sides=(96,), prefix=prefix)
    buffer = io.BytesIO()
    pq.write_table(sample_manifest(images, world.sources), buffer)
    return buffer.getvalue()


def _source_dir(world: World) -> Path:
    return Path(world.stack.home).parent / "sources"


def _feed_runs(stack: AirflowStack) -> dict[str, dict[str, Any]]:
    runs = stack._paged(f"/dags/{FEED_DAG}/dagRuns", "dag_runs", {})
    return {run["dag_run_id"]: run for run in runs}


def _at_least(runs: dict[str, Any], count: int) -> dict[str, Any] | None:
    return runs if len(runs) >= count else None


def _wait_until(condition, timeout: float, what: str, stack: AirflowStack):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        stack.check_alive()
        time.sleep(1)
    raise AssertionError(
        f"{what} not within {timeout:.0f} s:\n" + stack.log_tails(["triggerer", "scheduler"])
    )


def _assert_batches_used_webhooks(world: World, run_id: str) -> None:
    """The run's pipelines carried the batch's notify_url, and LEAPI's webhooks were accepted."""
    batches = [ti for ti in world.stack.task_instances(FEED_DAG, run_id) if ti["task_id"] == "batch"]
    assert batches
    for ti in batches:
        ids = (
            world.stack.api()
            .get(
                f"/dags/{FEED_DAG}/dagRuns/{run_id}/taskInstances/batch/xcomEntries/pipeline_ids",
                params={"map_index": ti["map_index"]},
            )
            .json()["value"]
        )
        for pipeline_id in json.loads(ids) if isinstance(ids, str) else ids:
            with world.leapi.client() as client:
                pipeline = client.get(f"/v1/pipeline/{pipeline_id}").json()["pipeline"]
                (delivery,) = client.get(f"/v1/pipeline/{pipeline_id}/webhooks").json()["deliveries"]
            assert pipeline["notify_url"].startswith(f"{world.settings.base_url}/v1/ti-"), pipeline
            assert delivery["attempts"][-1]["status_code"] == 202, delivery


def test_each_manifest_write_starts_exactly_one_feed_run(world):
    local_only(world)
    stack, s3, sqs = world.stack, world.aws("s3"), world.aws("sqs")
    assert _feed_runs(stack) == {}
    # Two manifests landing together.
    s3.put_object(Bucket=BUCKET, Key="incoming/feed-a.parquet", Body=_manifest_bytes(world, 2, "a"))
    s3.put_object(Bucket=BUCKET, Key="incoming/feed-b.parquet", Body=_manifest_bytes(world, 2, "b"))
    s3.put_object(Bucket=BUCKET, Key="incoming/notes.txt", Body=b"not a manifest")  # filtered by the bucket
    runs = _wait_until(lambda: _at_least(_feed_runs(stack), 2), 240, "two feed runs", stack)
    manifests = sorted(run["conf"]["manifest"] for run in runs.values())
    assert manifests == [f"s3://{BUCKET}/incoming/feed-a.parquet", f"s3://{BUCKET}/incoming/feed-b.parquet"]
    assert all(run_id.startswith("manifest__incoming_feed-") for run_id in runs)

    # One notification delivered twice (SQS and S3 are at-least-once): one run. Real S3 gives every write a
    # ``sequencer`` and sends the same message again; moto builds each queue's copy with its own
    # ``eventTime`` and no sequencer, so the tap's copy is not the watched queue's message: the duplicate is
    # the tap's copy with a sequencer, as S3 would send it, delivered twice.
    tapped = sqs.receive_message(QueueUrl=world.tap_url, MaxNumberOfMessages=10, WaitTimeSeconds=2)[
        "Messages"
    ]
    event = json.loads(next(m["Body"] for m in tapped if "feed-a.parquet" in m["Body"]))
    event["Records"][0]["s3"]["object"]["sequencer"] = "0065F1A2B3C4D5E6F7"
    dispatches_before = len(stack._paged(f"/dags/{ARRIVALS_DAG}/dagRuns", "dag_runs", {}))
    for _ in range(2):
        sqs.send_message(QueueUrl=world.queue_url, MessageBody=json.dumps(event))
    _wait_until(
        lambda: (d := stack._paged(f"/dags/{ARRIVALS_DAG}/dagRuns", "dag_runs", {})) and len(d) >= dispatches_before + 2
        and all(run["state"] in ("success", "failed") for run in d),
        240, "the dispatcher runs of the duplicated notification", stack,
    )  # fmt: skip
    runs = _wait_until(lambda: _at_least(_feed_runs(stack), 3), 240, "the duplicated write's run", stack)
    assert len(runs) == 3, f"a notification delivered twice started {len(runs) - 2} runs: {sorted(runs)}"

    # feed-a written again: a new write, a new run.
    s3.put_object(Bucket=BUCKET, Key="incoming/feed-a.parquet", Body=_manifest_bytes(world, 3, "a2"))
    all_runs = _wait_until(lambda: _at_least(_feed_runs(stack), 4), 240, "the fourth run", stack)
    assert len(all_runs) == 4
    # The catalog DAGs run one at a time (max_active_runs=1): the first run succeeding by itself is the
    # proof (the other two follow the same path; ``make e2e EVENTS=1`` runs one more), not 3 runs' time.
    first = min(all_runs, key=lambda run_id: all_runs[run_id]["queued_at"] or "")
    assert stack.wait_for_run(FEED_DAG, first, timeout=600) == "success", stack.run_report(FEED_DAG, first)
    _assert_batches_used_webhooks(world, first)
    dispatches = stack._paged(f"/dags/{ARRIVALS_DAG}/dagRuns", "dag_runs", {})
    assert all(run["state"] == "success" for run in dispatches), dispatches
