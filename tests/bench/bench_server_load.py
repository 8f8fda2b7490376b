"""Benchmark: 500 concurrent clients submitting and polling ``leapi-server`` on loopback, on three
deployments side by side in one run: one node on SQLite (+ file temp store), one node on PostgreSQL
(+ S3, moto), and two replicas sharing that PostgreSQL and bucket (clients spread over them, as a load
balancer would). The machine's cores are shared the same way in each: the single nodes run one worker
per core, the two replicas half as many each.

Each client is what a careless integration does: submit one image, poll its pipeline every second until it
is finished, submit the next; a REJECTED rate limit is honoured through ``Retry-After``. The clients share
eight API keys under the server's default rate limit (120 submits per key per minute), so refusals happen.
The load runs for a bounded time; then the clients stop and every accepted pipeline is polled until it is
DONE or ERROR (none may be lost), and the credit ledger (``/v1/me/usage/``) must equal the accepted images.

Baseline, same run, same server: one client doing the same loop on the idle server. The ratio of latencies
under load to the baseline is what to compare between machines. The load generator shares the machine's
cores with the server and its workers, so under load its own scheduling delay is part of every latency.

Settings: ``LEAPI_LOAD_CLIENTS`` (500), ``LEAPI_LOAD_SECONDS`` (40 per deployment).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import resource
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

from devkit.server import BackendSetup, RunningServer, ServerBackend, running_server
from devkit.sources import serve_directory, write_sample_photo

if TYPE_CHECKING:
    from devkit.postgres import PostgresCluster
    from devkit.s3 import MotoS3Server

CLIENTS = int(os.environ.get("LEAPI_LOAD_CLIENTS", "500"))
LOAD_SECONDS = float(os.environ.get("LEAPI_LOAD_SECONDS", "40"))
#: Few keys for many clients (as shared accounts): near the end of the first minute they meet the per-key
#: rate limit, so refusals happen while the worker pool stays busy.
API_KEYS = tuple(f"load-key-{i:02d}" for i in range(8))
POLL_INTERVAL_S = 1.0
BASELINE_PIPELINES = 60
DRAIN_TIMEOUT_S = 600.0
OPERATION = {
    "op": "preset/marketplace",
    "width": 300,
    "height": 200,
    "restoration_level": 4,
    "lightai_intensity": 1.0,
    "toneai_intensity": 0.5,
    "image_format": "JPEG",
    "quality": 80,
}


@dataclass
class Tally:
    post_latency: list[float] = field(default_factory=list)
    get_latency: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    transport_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    accepted: dict[int, str] = field(default_factory=dict)  # pipeline id -> API key
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    finished_during_load: int = 0


@dataclass
class Measured:
    """One deployment's run: its baseline, its load, what was drained and charged afterwards."""

    label: str
    workers: int
    #: The machine's 1-minute load average at the end of the load (other users of the cores show here).
    load_average: float
    baseline: Tally
    tally: Tally
    busy: list[int]
    load_wall: float
    outcome: collections.Counter[str]
    drain_s: float
    charged: int
    unhandled: int
    server_cpu: float
    client_cpu: float

    @property
    def five_xx(self) -> int:
        return sum(n for code, n in self.tally.statuses.items() if code >= 500)

    @property
    def lost(self) -> int:
        return self.outcome["PROCESSING (lost)"] + self.outcome.get("MISSING", 0)

    @property
    def clean(self) -> bool:
        return (
            self.five_xx == 0
            and self.lost == 0
            and self.charged == len(self.tally.accepted)
            and not self.tally.transport_errors
            and not self.unhandled
        )


async def client_loop(
    http: httpx.AsyncClient, key: str, source_url: str, tally: Tally, stop_at: float, rng: random.Random
) -> None:
    headers = {"X-API-KEY": key}
    payload = {
        "source": {"http": {"url": source_url}},
        "operations": [OPERATION],
        "sink": {"temp_store": True},
    }
    await asyncio.sleep(rng.uniform(0, 1.0))  # clients arrive over the first second
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        try:
            response = await http.post("/v1/pipeline", json=payload, headers=headers)
        except httpx.TransportError as exc:
            tally.transport_errors[type(exc).__name__] += 1
            await asyncio.sleep(1.0)
            continue
        tally.post_latency.append(time.perf_counter() - started)
        tally.statuses[response.status_code] += 1
        answer = response.json()
        if answer.get("status") != "ACCEPTED":
            tally.rejected[answer.get("reason", "?")] += 1
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")) + rng.uniform(0, 1))
            continue
        pipeline_id = answer["pipeline"]["id"]
        tally.accepted[pipeline_id] = key
        while time.monotonic() < stop_at:
            await asyncio.sleep(POLL_INTERVAL_S * rng.uniform(0.8, 1.2))
            started = time.perf_counter()
            try:
                response = await http.get(f"/v1/pipeline/{pipeline_id}", headers=headers)
            except httpx.TransportError as exc:
                tally.transport_errors[type(exc).__name__] += 1
                continue
            tally.get_latency.append(time.perf_counter() - started)
            tally.statuses[response.status_code] += 1
            if response.status_code == 200 and response.json()["pipeline"]["status"] != "PROCESSING":
                tally.finished_during_load += 1
                break


async def sample_busy(base_urls: list[str], stop_at: float, samples: list[int]) -> None:
    """How many tasks the dispatchers have leased, all replicas together (workers x 2: saturated)."""
    async with httpx.AsyncClient(timeout=30) as http:
        while time.monotonic() < stop_at:
            with contextlib.suppress(httpx.HTTPError):
                answers = [await http.get(base + "/healthz") for base in base_urls]
                samples.append(sum(a.json()["busy_tasks"] for a in answers))
            await asyncio.sleep(1.0)


async def run_clients(
    base_urls: list[str], source_url: str, clients: int, seconds: float
) -> tuple[Tally, list[int]]:
    tally = Tally()
    busy: list[int] = []
    stop_at = time.monotonic() + seconds
    rng = random.Random(500)
    # One client (one connection) each, as 500 separate integrations would have. They share one TLS
    # context: httpx builds one per client otherwise, and 500 of them cost the load generator seconds of
    # CPU (one shared pool of 500 connections is worse: httpcore scans it on every request).
    tls = ssl.create_default_context()

    async def one_client(index: int) -> None:
        base_url = base_urls[index % len(base_urls)]  # clients spread over the replicas
        async with httpx.AsyncClient(base_url=base_url, timeout=60, verify=tls) as http:
            await client_loop(http, API_KEYS[index % len(API_KEYS)], source_url, tally, stop_at, rng)

    await asyncio.gather(sample_busy(base_urls, stop_at, busy), *(one_client(i) for i in range(clients)))
    return tally, busy


async def run_baseline(base_url: str, source_url: str) -> Tally:
    """One client, the same loop, on the idle server: submit, poll until finished, repeat."""
    tally = Tally()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        await client_loop_once(http, source_url, Tally())  # warm-up: connection, first image in each worker
        await client_loop_once(http, source_url, Tally())
        for _ in range(BASELINE_PIPELINES):
            await client_loop_once(http, source_url, tally)
    return tally


async def client_loop_once(http: httpx.AsyncClient, source_url: str, tally: Tally) -> None:
    headers = {"X-API-KEY": "baseline-key"}
    payload = {
        "source": {"http": {"url": source_url}},
        "operations": [OPERATION],
        "sink": {"temp_store": True},
    }
    started = time.perf_counter()
    response = await http.post("/v1/pipeline", json=payload, headers=headers)
    tally.post_latency.append(time.perf_counter() - started)
    tally.statuses[response.status_code] += 1
    pipeline_id = response.json()["pipeline"]["id"]
    tally.accepted[pipeline_id] = "baseline-key"
    while True:
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        response = await http.get(f"/v1/pipeline/{pipeline_id}", headers=headers)
        tally.get_latency.append(time.perf_counter() - started)
        tally.statuses[response.status_code] += 1
        if response.json()["pipeline"]["status"] != "PROCESSING":
            return


async def drain(base_url: str, accepted: dict[int, str]) -> tuple[collections.Counter[str], float]:
    """Poll every accepted pipeline until it is terminal (or the drain times out): final status counts."""
    started = time.monotonic()
    outcome: collections.Counter[str] = collections.Counter()
    pending = dict(accepted)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=50)
    ) as http:
        semaphore = asyncio.Semaphore(50)

        async def status(pipeline_id: int, key: str) -> str:
            async with semaphore:
                try:
                    response = await http.get(f"/v1/pipeline/{pipeline_id}", headers={"X-API-KEY": key})
                except httpx.TransportError:
                    # A kept-alive connection the server closed as idle (uvicorn: after 5 s) while this
                    # request was sent on it: asked again next round. A server that is gone shows as lost.
                    return "PROCESSING"
                return response.json()["pipeline"]["status"] if response.status_code == 200 else "MISSING"

        while pending and time.monotonic() - started < DRAIN_TIMEOUT_S:
            items = list(pending.items())
            results = await asyncio.gather(*(status(pid, key) for pid, key in items))
            for (pipeline_id, _key), state in zip(items, results, strict=False):
                if state != "PROCESSING":
                    outcome[state] += 1
                    del pending[pipeline_id]
            if pending:
                await asyncio.sleep(1.0)
    outcome["PROCESSING (lost)"] = len(pending)
    return outcome, time.monotonic() - started


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``), its worker children not included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000 if values else float("nan")


def measure(label: str, servers: list[RunningServer], workers: int, source_url: str) -> Measured:
    """Baseline then load on ``servers`` (one deployment), then drain and count the charges."""
    base_urls = [server.base_url for server in servers]
    baseline = asyncio.run(run_baseline(base_urls[0], source_url))
    pids = [server.process.pid for server in servers if server.process is not None]
    load_started, client_cpu0 = time.monotonic(), _own_cpu()
    server_cpu0 = sum(_cpu_seconds(pid) for pid in pids)
    tally, busy = asyncio.run(run_clients(base_urls, source_url, CLIENTS, LOAD_SECONDS))
    load_wall = time.monotonic() - load_started
    load_average = os.getloadavg()[0]
    server_cpu = (sum(_cpu_seconds(pid) for pid in pids) - server_cpu0) / load_wall
    client_cpu = (_own_cpu() - client_cpu0) / load_wall
    # Drained through the last replica: any replica answers for any pipeline.
    outcome, drain_s = asyncio.run(drain(base_urls[-1], tally.accepted))
    charged = sum(
        httpx.get(base_urls[0] + "/v1/me/usage/", headers=servers[0].headers(key)).json()["used"]
        for key in API_KEYS
    )
    unhandled = sum(server.logs().count("unhandled error") for server in servers)
    return Measured(
        label=label,
        workers=workers,
        load_average=load_average,
        baseline=baseline,
        tally=tally,
        busy=busy,
        load_wall=load_wall,
        outcome=outcome,
        drain_s=drain_s,
        charged=charged,
        unhandled=unhandled,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
    )


def _deployments(
    tmp: Path, cluster: PostgresCluster, moto: MotoS3Server
) -> list[tuple[str, int, BackendSetup]]:
    """(label, replicas, backend) of each deployment measured."""
    from devkit.s3 import s3_environment

    def postgres(name: str) -> BackendSetup:
        moto.client().create_bucket(Bucket=f"load-{name}")
        return BackendSetup(
            database_url=cluster.create_database(f"load_{name}"),
            temp_store=f"s3://load-{name}/out",
            env=s3_environment(moto),
        )

    return [
        ("1 node, SQLite + file", 1, BackendSetup()),
        ("1 node, PostgreSQL + S3", 1, postgres("single")),
        ("2 replicas, PostgreSQL + S3", 2, postgres("replicas")),
    ]


def run() -> str:
    from devkit.postgres import PostgresCluster
    from devkit.s3 import MotoS3Server

    cores = os.cpu_count() or 1
    results: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="leapi-load-") as tmp:
        sources = Path(tmp) / "sources"
        write_sample_photo(sources / "product.jpg", "coffee", size=(600, 400), quality=85)
        cluster, moto = PostgresCluster(), MotoS3Server(Path(tmp) / "moto.log")
        try:
            cluster.start()
            moto.start()
            with serve_directory(sources) as source_base:
                for label, count, setup in _deployments(Path(tmp), cluster, moto):
                    workers = max(1, cores // count)
                    backend = ServerBackend(name=label, setup=lambda _data_dir, setup=setup: setup)
                    args = ("--workers", str(workers), "--monthly-quota", "0", "--log-level", "warning")
                    with contextlib.ExitStack() as stack:
                        servers = [
                            stack.enter_context(
                                running_server(
                                    api_keys=(*API_KEYS, "baseline-key"), extra_args=args, backend=backend
                                )
                            )
                            for _ in range(count)
                        ]
                        results.append(measure(label, servers, workers, f"{source_base}/product.jpg"))
        finally:
            moto.stop()
            cluster.close()
    return report(results)


def report(results: list[Measured]) -> str:
    def ms(values: list[float], q: float) -> str:
        return f"{percentile(values, q):.1f} ms"

    header = "| | " + " | ".join(r.label for r in results) + " |"
    rule = "|---|" + "---|" * len(results)

    def line(name: str, cell: Callable[[Measured], object]) -> str:
        return f"| {name} | " + " | ".join(str(cell(r)) for r in results) + " |"

    lines = [
        f"## Server under load: {CLIENTS} concurrent clients, three deployments (`server_load`)",
        "",
        (
            f"Each deployment in turn, in one run: {CLIENTS} asyncio httpx clients for {LOAD_SECONDS:g} s, each "
            f"submitting one 600x400 JPEG (to {OPERATION['width']}x{OPERATION['height']}, quick-start preset) and "
            f"polling it every {POLL_INTERVAL_S:g} s until finished, then submitting the next; {len(API_KEYS)} API keys "
            "under the default rate limit (120 submits/min per key, counted per replica), REJECTED answers honoured "
            "through `Retry-After`. With two replicas the clients alternate between them. PostgreSQL 15 and moto's "
            "S3 server run on the same machine. Baseline: one client, the same loop, on the idle deployment "
            f"({BASELINE_PIPELINES} pipelines after one warm-up)."
        ),
        "",
        header,
        rule,
        line("worker processes", lambda r: f"{r.workers} per replica"),
        line("machine load average (1 min) at the end of the load", lambda r: f"{r.load_average:.1f}"),
        line(
            "idle POST p50 / p99",
            lambda r: f"{ms(r.baseline.post_latency, 50)} / {ms(r.baseline.post_latency, 99)}",
        ),
        line(
            "idle GET p50 / p99",
            lambda r: f"{ms(r.baseline.get_latency, 50)} / {ms(r.baseline.get_latency, 99)}",
        ),
        line(
            "**POST p50 / p99 under load**",
            lambda r: f"{ms(r.tally.post_latency, 50)} / {ms(r.tally.post_latency, 99)}",
        ),
        line(
            "**GET p50 / p99 under load**",
            lambda r: f"{ms(r.tally.get_latency, 50)} / {ms(r.tally.get_latency, 99)}",
        ),
        line(
            "**images per second** (finished during the load)",
            lambda r: f"{r.tally.finished_during_load / r.load_wall:.1f}",
        ),
        line(
            "**5xx answers** / transport errors",
            lambda r: f"{r.five_xx} / {sum(r.tally.transport_errors.values())}",
        ),
        line(
            "requests answered",
            lambda r: f"{len(r.tally.post_latency)} POST, {len(r.tally.get_latency)} GET",
        ),
        line(
            "accepted / rejected (429)",
            lambda r: f"{len(r.tally.accepted)} / {sum(r.tally.rejected.values())}",
        ),
        line(
            "worker slots leased (mean of 1 s samples)", lambda r: f"{np.mean(r.busy) if r.busy else 0:.1f}"
        ),
        line(
            "drained after the load",
            lambda r: f"{ {k: v for k, v in r.outcome.items() if v} } in {r.drain_s:.0f} s",
        ),
        line("lost pipelines", lambda r: r.lost),
        line("credits charged vs accepted images", lambda r: f"{r.charged} vs {len(r.tally.accepted)}"),
        line("unhandled errors in the server logs", lambda r: r.unhandled),
        line(
            "API process CPU (all replicas) / load generator CPU",
            lambda r: f"{r.server_cpu:.0%} / {r.client_cpu:.0%}",
        ),
        line(
            "verdict (zero 5xx, zero lost, charged == accepted)",
            lambda r: f"**{'PASS' if r.clean else 'FAIL'}**",
        ),
        "",
        (
            "Under load the latencies include the wait for a turn on each server's event loop and on the load "
            "generator's own (all clients in one process, sharing the machine's cores with the servers, their niced "
            "workers, PostgreSQL and moto). On one machine two replicas add no cores, so images per second measure the "
            "cost of the shared database and S3 uploads, not the gain of a second host."
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
