"""Benchmark: 500 concurrent clients submitting and polling one ``leapi-server`` on loopback.

Each client is what a careless integration does: submit one image, poll its pipeline every second until it
is finished, submit the next; a REJECTED rate limit is honoured through ``Retry-After``. The clients share
eight API keys under the server's default rate limit (120 submits per key per minute), so refusals happen.
The load runs for a bounded time; then the clients stop and every accepted pipeline is polled until it is
DONE or ERROR (none may be lost), and the credit ledger (``/v1/me/usage/``) must equal the accepted images.

Baseline, same run, same server: one client doing the same loop on the idle server. The ratio of latencies
under load to the baseline is what to compare between machines. The load generator shares the machine's
cores with the server and its workers, so under load its own scheduling delay is part of every latency.

Settings: ``LEAPI_LOAD_CLIENTS`` (500), ``LEAPI_LOAD_SECONDS`` (60).
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from tests.support.server import running_server, serve_directory, write_sample_photo

CLIENTS = int(os.environ.get("LEAPI_LOAD_CLIENTS", "500"))
LOAD_SECONDS = float(os.environ.get("LEAPI_LOAD_SECONDS", "60"))
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


async def sample_busy(base_url: str, stop_at: float, samples: list[int]) -> None:
    """How many tasks the dispatcher has leased (workers x 2 means the pool is saturated)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        while time.monotonic() < stop_at:
            with contextlib.suppress(httpx.HTTPError):
                samples.append((await http.get("/healthz")).json()["busy_tasks"])
            await asyncio.sleep(1.0)


async def run_clients(
    base_url: str, source_url: str, clients: int, seconds: float
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
        async with httpx.AsyncClient(base_url=base_url, timeout=60, verify=tls) as http:
            await client_loop(http, API_KEYS[index % len(API_KEYS)], source_url, tally, stop_at, rng)

    await asyncio.gather(sample_busy(base_url, stop_at, busy), *(one_client(i) for i in range(clients)))
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
                response = await http.get(f"/v1/pipeline/{pipeline_id}", headers={"X-API-KEY": key})
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


def run() -> str:
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="leapi-load-") as tmp:
        sources = Path(tmp) / "sources"
        write_sample_photo(sources / "product.jpg", "coffee", size=(600, 400), quality=85)
        with (
            serve_directory(sources) as source_base,
            running_server(
                data_dir=Path(tmp) / "data",
                api_keys=(*API_KEYS, "baseline-key"),
                extra_args=("--workers", str(workers), "--monthly-quota", "0", "--log-level", "warning"),
            ) as server,
        ):
            source_url = f"{source_base}/product.jpg"
            baseline = asyncio.run(run_baseline(server.base_url, source_url))
            assert server.process is not None
            load_started, server_cpu0, client_cpu0 = (
                time.monotonic(),
                _cpu_seconds(server.process.pid),
                _own_cpu(),
            )
            tally, busy = asyncio.run(run_clients(server.base_url, source_url, CLIENTS, LOAD_SECONDS))
            load_wall = time.monotonic() - load_started
            server_cpu = (_cpu_seconds(server.process.pid) - server_cpu0) / load_wall
            client_cpu = (_own_cpu() - client_cpu0) / load_wall
            outcome, drain_s = asyncio.run(drain(server.base_url, tally.accepted))
            charged = sum(
                httpx.get(server.base_url + "/v1/me/usage/", headers=server.headers(key)).json()["used"]
                for key in API_KEYS
            )
            unhandled = server.logs().count("unhandled error")

    posts, gets = len(tally.post_latency), len(tally.get_latency)
    five_xx = sum(n for code, n in tally.statuses.items() if code >= 500)
    accepted = len(tally.accepted)
    rejected = sum(tally.rejected.values())
    lost = outcome["PROCESSING (lost)"] + outcome.get("MISSING", 0)
    saturated = sum(1 for b in busy if b >= workers) / max(len(busy), 1)
    images_per_s = tally.finished_during_load / load_wall

    def row(name: str, base: list[float], load: list[float], q: float) -> str:
        b, l_ = percentile(base, q), percentile(load, q)
        return f"| {name} p{q:g} | {b:.1f} ms | {l_:.1f} ms | {l_ / b:.1f}x |"

    clean = (
        five_xx == 0 and lost == 0 and charged == accepted and not tally.transport_errors and not unhandled
    )
    verdict = "PASS" if clean else "FAIL"
    intro = (
        f"One `leapi-server` ({workers} worker processes, default rate limit 120 submits/min per key, "
        f"{len(API_KEYS)} API keys) on loopback; {CLIENTS} asyncio httpx clients for {LOAD_SECONDS:g} s, each "
        f"submitting one 600x400 JPEG (to {OPERATION['width']}x{OPERATION['height']}, quick-start preset) and "
        f"polling it every {POLL_INTERVAL_S:g} s until finished, then submitting the next; REJECTED answers "
        "honoured through `Retry-After`. Baseline: one client, the same loop, on the idle server "
        f"({BASELINE_PIPELINES} pipelines after one warm-up), same run."
    )
    rejections = ", ".join(f"{n} x `{r}`" for r, n in tally.rejected.most_common()) or "none"
    errors = f"{five_xx} / {sum(tally.transport_errors.values())} {dict(tally.transport_errors) or ''}"
    terminal = {k: v for k, v in outcome.items() if v}
    leased = f"tasks leased: mean {np.mean(busy) if busy else 0:.1f} of {workers * 2} slots"
    caveat = (
        "Under load the latencies include the wait for a turn on the server's single event loop and on the "
        "load generator's own (500 asyncio clients in one process, sharing the machine's cores with the "
        "server and its niced workers): the ratio is the cost of the load as a client sees it. Server and "
        f"load generator CPU during the load: {server_cpu:.0%} and {client_cpu:.0%} of one core."
    )
    lines = [
        "## Server under load: 500 concurrent clients (`server_load`)",
        "",
        intro,
        "",
        "| Latency (client side) | idle baseline, 1 client | under load | ratio |",
        "|---|---|---|---|",
        row("POST /v1/pipeline", baseline.post_latency, tally.post_latency, 50),
        row("POST /v1/pipeline", baseline.post_latency, tally.post_latency, 99),
        row("GET /v1/pipeline/{id}", baseline.get_latency, tally.get_latency, 50),
        row("GET /v1/pipeline/{id}", baseline.get_latency, tally.get_latency, 99),
        "",
        "| Under load | |",
        "|---|---|",
        f"| requests answered | {posts} POST, {gets} GET ({(posts + gets) / load_wall:.0f} per s) |",
        f"| accepted pipelines (images) | {accepted} |",
        f"| rejected | {rejected} ({rejections}) |",
        f"| HTTP status counts | {dict(sorted(tally.statuses.items()))} |",
        f"| 5xx answers / transport errors | {errors} |",
        f"| worker pool saturated (every worker on an image) | {saturated:.0%} of 1 s samples ({leased}) |",
        f"| images finished during the load | {tally.finished_during_load} ({images_per_s:.1f} per s) |",
        f"| after the load: terminal pipelines | {terminal} (drained in {drain_s:.0f} s) |",
        f"| lost pipelines (accepted, never terminal) | {lost} |",
        f"| credits charged (usage, all keys) vs accepted images | {charged} vs {accepted} |",
        f"| unhandled errors in the server log | {unhandled} |",
        f"| verdict (zero 5xx, zero lost, charged == accepted) | **{verdict}** |",
        "",
        caveat,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
