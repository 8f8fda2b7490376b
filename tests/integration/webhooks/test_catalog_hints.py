"""Catalog batches woken by LEAPI's webhooks (``add_catalog_tasks(webhook_conn_id=...)``), whatever the network
does to the webhooks.

A catalog DAG runs with ``dag.test()`` against a real ``leapi-server`` that signs its webhooks. They reach the
real receiver (uvicorn, under ``/leapi-webhooks``) through a proxy that plays the network: it passes them on,
duplicates and replays them and adds forgeries, loses them, or delays them; the receiver hands them to the
batch's trigger through a real ``redis-server``. In every case each image gets one ``done`` row and is
charged once, and no task fails:

* **duplicated, replayed, forged**: each webhook arrives twice, again 1.5 s later (a replay within the
  signature's tolerance), and with two forgeries (a wrong token, a wrong signature) that the receiver
  refuses; the batch reads each pipeline once (<= 1.05 status reads per pipeline);
* **lost**: every webhook is acknowledged and dropped; the fallback polling collects the batch;
* **late**: every webhook is delivered 6 s after LEAPI sent it, after the fallback polling read the
  pipeline: late hints for pipelines already collected are never read;
* **premature**: hints forged straight into Redis (a leaked token and signing secret, or a bug) say every
  pipeline is done the moment the batch defers: the batch reads what they name, finds them running,
  re-arms them, and the true webhooks (or, for those that came in between, the fallback) finish the wait.

The fallback polling's gap is cut from 60 s to 4 s here (``WEBHOOK_FALLBACK_POLL_INTERVAL_S``), and
Airflow's reporting-window margin to 0.5 s (``dag.test()`` has no scheduler to race).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from devkit.airflow_dags import load_dag
from devkit.server import RunningServer, free_port
from leapi.webhooks import generate_secret, signed_headers
from leapi_provider.webhooks.hints import KEY_PREFIX, HintPublisher
from leapi_provider.webhooks.hook import WebhookSettings
from tests.fixtures.airflow import leapi_connection
from tests.fixtures.webhooks import SIGNING_SECRET, serve_receiver, webhook_conn_env
from tests.integration.dags.test_catalog_waits import one_operation_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DAG_ID = "leapi_catalog_webhooks"
IMAGES = 16
URLS_PER_PIPELINE = 2
PIPELINES = IMAGES // URLS_PER_PIPELINE
FALLBACK_S = 4.0

_DAG_FILE = f'''
from datetime import datetime

from airflow.sdk import DAG

from leapi_provider.catalog import add_catalog_tasks, catalog_params

with DAG(dag_id="{DAG_ID}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         params=catalog_params(manifest="", results="", images="")) as dag:
    add_catalog_tasks(deferrable=True, poll_interval=2, webhook_conn_id="leapi_webhooks_default")
'''


@pytest.fixture(scope="module")
def signing_server_args() -> tuple[str, ...]:
    """``signing_server`` holds each pipeline back a random 0-3 s, so that they finish out of order and over a
    few seconds."""
    return ("--test-finish-shuffle", "3")


@pytest.fixture(scope="session")
def leapi_server(leapi_server_default: RunningServer) -> RunningServer:
    """(``catalog_env``'s ``leapi_default``: one mode; the runs here point it at ``signing_server``.)"""
    return leapi_server_default


@dataclasses.dataclass
class Network:
    """What the proxy did: the receiver's status code per kind of request it sent."""

    mode: str
    target: str
    answers: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def note(self, kind: str, status: int) -> None:
        self.answers.setdefault(kind, []).append(status)


async def _send(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> int:
    try:
        return (await client.post(url, content=body, headers=headers)).status_code
    except httpx.HTTPError:
        return 0


def _proxy_app(network: Network) -> FastAPI:
    app = FastAPI()
    client = httpx.AsyncClient(timeout=10)
    background: set[asyncio.Task] = set()

    def later(delay: float, kind: str, url: str, body: bytes, headers: dict[str, str]) -> None:
        async def go() -> None:
            await asyncio.sleep(delay)
            network.note(kind, await _send(client, url, body, headers))

        task = asyncio.ensure_future(go())
        background.add(task)
        task.add_done_callback(background.discard)

    @app.post("/leapi-webhooks/{path:path}")
    async def relay(path: str, request: Request) -> Response:
        body = await request.body()
        headers = {
            k: v for k, v in request.headers.items() if k.startswith("webhook-") or k == "content-type"
        }
        url = f"{network.target}/{path}?{request.url.query}"
        if network.mode == "lost":
            network.note("dropped", 202)
            return Response(status_code=202)
        if network.mode == "late":
            later(6.0, "late", url, body, headers)
            return Response(status_code=202)
        status = await _send(client, url, body, headers)
        network.note("original", status)
        if network.mode == "hostile":
            network.note("duplicate", await _send(client, url, body, headers))
            later(1.5, "replay", url, body, headers)
            forged_token = re.sub(r"token=[^&]+", "token=" + "A" * 32, url)
            network.note("forged token", await _send(client, forged_token, body, headers))
            wrong = signed_headers(generate_secret(), headers.get("webhook-id", "m"), body)
            network.note("forged signature", await _send(client, url, body, wrong))
        return Response(status_code=status)

    return app


@contextlib.contextmanager
def serve_proxy(network: Network) -> Iterator[str]:
    """The proxy on a free port; yields its ``/leapi-webhooks`` base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_proxy_app(network), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="webhook-proxy", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/leapi-webhooks"
    finally:
        server.should_exit = True
        thread.join(10)


class PrematureHints:
    """Forges a hint, straight into Redis, for each of ids 1..``upto`` on every channel that appears (once
    per channel): what a leaked token and signing secret could do."""

    def __init__(self, settings: WebhookSettings, upto: int) -> None:
        self.settings, self.upto = settings, upto
        self.channels: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        publisher = HintPublisher(location=self.settings.redis, ttl_s=600)
        client = self.settings.redis.client()
        try:
            while not self._stop.is_set():
                async for key in client.scan_iter(match=f"{KEY_PREFIX}:*:seen"):
                    channel = key.decode().split("{", 1)[1].split("}", 1)[0]
                    if channel not in self.channels:
                        self.channels.add(channel)
                        for pipeline_id in range(1, self.upto + 1):
                            await publisher.publish(channel, pipeline_id)
                await asyncio.sleep(0.05)
        finally:
            await publisher.aclose()
            await client.aclose()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)


def status_reads(server: RunningServer, since: int) -> int:
    return len(re.findall(r'"GET /v1/pipeline/\d+ HTTP', server.logs()[since:]))


@pytest.fixture
def catalog_dag(test_dags_dir: Path) -> Any:
    path = test_dags_dir / "leapi_catalog_webhooks.py"
    path.write_text(_DAG_FILE)
    return load_dag(path, DAG_ID)


@pytest.fixture
def quick_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import leapi_provider.operators.leapi

    monkeypatch.setattr(leapi_provider.operators.leapi, "WEBHOOK_FALLBACK_POLL_INTERVAL_S", FALLBACK_S)
    monkeypatch.setenv("AIRFLOW__LEAPI__RESUME_MARGIN", "0.5")


@dataclasses.dataclass
class Outcome:
    reads: int
    hinted_resumes: int
    #: Pipelines hinted done but read still running (then handed back).
    rearmed: int


def run_catalog(
    mode: str, *, dag: Any, server: RunningServer, site, bucket, settings, redis_server, monkeypatch
) -> tuple[Network, Outcome]:
    """One run of the catalog DAG with the webhooks going through the proxy in ``mode``; checks that every
    image has one ``done`` row and was charged once, and that no task failed."""
    network = Network(mode=mode, target="")
    images = site.add_images(IMAGES, prefix=f"hooks-{mode}", long_sides=(96,))
    conf = {
        "manifest": bucket.put_manifest(one_operation_manifest(images, site.base_url)),
        "results": bucket.uri("results"),
        "images": bucket.uri("images"),
        "urls_per_pipeline": URLS_PER_PIPELINE,
        "min_images_per_batch": IMAGES,
        "contact_sheet_images": 0,
    }
    credits, log_start = server.used_credits(), len(server.logs())
    hinted_reads = _count_hinted_reads(monkeypatch)
    with (
        serve_receiver(dataclasses.replace(settings, signing_secret=SIGNING_SECRET)) as received,
        serve_proxy(network) as proxy_url,
        leapi_connection(server.base_url, server.api_key),
    ):
        network.target = received.base_url
        conns = webhook_conn_env(dataclasses.replace(settings, base_url=proxy_url), redis_server)
        for name, value in conns.items():
            monkeypatch.setenv(name, value)
        dag_run = dag.test(run_conf=conf)
    assert dag_run.state == "success", dag_run.state
    _assert_no_task_failed(dag_run)
    results = bucket.results().to_pylist()
    mine = [r for r in results if r["image_id"] in {i.image_id for i in images}]
    assert len(mine) == IMAGES and {r["status"] for r in mine} == {"done"}, "one done row per image"
    assert server.used_credits() - credits == IMAGES, "each image charged once"
    posts = server.logs()[log_start:].count('"POST /v1/pipeline HTTP')
    assert posts == PIPELINES, posts
    hinted = len(hinted_reads)
    outcome = Outcome(status_reads(server, log_start), hinted, sum(map(len, hinted_reads)))
    print(f"\n{mode}: {outcome.reads} status reads for {PIPELINES} pipelines, {hinted} hinted resume(s); "
          f"proxy: { {kind: sorted(set(codes)) for kind, codes in network.answers.items()} }")  # fmt: skip
    return network, outcome


def _count_hinted_reads(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Each resume by webhooks (a :meth:`BatchCollector.read_hinted` call): the ids it found still running."""
    from leapi_provider.catalog.collect import BatchCollector

    calls: list[list[int]] = []
    original = BatchCollector.read_hinted

    def spy(self: BatchCollector, through: int) -> list[int]:
        calls.append(running := original(self, through))
        return running

    monkeypatch.setattr(BatchCollector, "read_hinted", spy)
    return calls


def _assert_no_task_failed(dag_run: Any) -> None:
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = dag_run.get_task_instances(session=session)
        states = {(ti.task_id, ti.map_index): (ti.state, ti.try_number) for ti in tis}
    assert all(state == "success" and tries == 1 for state, tries in states.values()), states


@pytest.fixture
def run(catalog_env, catalog_site, catalog_bucket, catalog_dag, signing_server, webhook_settings, redis_server,
        monkeypatch, quick_fallback):  # fmt: skip
    def go(mode: str) -> tuple[Network, Outcome]:
        return run_catalog(
            mode,
            dag=catalog_dag,
            server=signing_server,
            site=catalog_site,
            bucket=catalog_bucket,
            settings=webhook_settings,
            redis_server=redis_server,
            monkeypatch=monkeypatch,
        )

    return go


def test_duplicated_replayed_and_forged_webhooks_cost_nothing(run) -> None:
    network, outcome = run("hostile")
    assert set(network.answers["original"]) == {202}
    assert set(network.answers["duplicate"]) == {202}, "a duplicate is acknowledged (and queues nothing)"
    assert set(network.answers["forged token"]) == {403}
    assert set(network.answers["forged signature"]) == {401}
    assert len(network.answers["original"]) == PIPELINES, "LEAPI sent one webhook per pipeline"
    assert outcome.hinted_resumes >= 1 and outcome.rearmed == 0, outcome
    assert outcome.reads <= PIPELINES * 1.05, f"{outcome.reads} status reads for {PIPELINES} pipelines"


def test_lost_webhooks_leave_the_batch_to_the_fallback_polling(run) -> None:
    network, outcome = run("lost")
    assert len(network.answers["dropped"]) == PIPELINES
    assert outcome.hinted_resumes == 0


def test_late_webhooks_are_never_read_for_pipelines_already_collected(run) -> None:
    _, outcome = run("late")
    # The fallback read collected every pipeline before its webhook arrived; a late hint reads nothing.
    assert outcome.reads <= PIPELINES * 2, f"{outcome.reads} status reads for {PIPELINES} pipelines"


def test_premature_hints_are_read_once_and_rearmed(run, webhook_settings) -> None:
    with PrematureHints(webhook_settings, upto=10_000) as forger:
        network, outcome = run("pass")
    assert forger.channels, "the forger saw the batch's channel"
    assert set(network.answers["original"]) == {202}
    assert outcome.hinted_resumes >= 1 and outcome.rearmed >= 1, outcome
    # Each forged hint costs at most one read of a running pipeline; ids not in the batch are never read.
    assert outcome.reads <= PIPELINES * 3, f"{outcome.reads} status reads for {PIPELINES} pipelines"
