"""Benchmark: one triggerer-style asyncio loop waiting for 1,000 pipelines on ``leapi-server`` at once.

Two ways to wait for the same 1,000 pipelines, each measured in a fresh interpreter (its own RSS and CPU):

* **one trigger**: one :class:`LeapiPipelineTrigger` watching all 1,000 ids (bounded concurrent polls);
* **1,000 triggers** (baseline): one trigger per pipeline, all running in one event loop, as a triggerer
  runs the triggers of 1,000 deferred tasks.

Each child submits 1,000 fresh one-image pipelines (small real photographs, so the server finishes them in
seconds), then measures from the start of the wait until every event is out: peak RSS growth above the
level after submitting (sampled every 20 ms), CPU seconds of the process, wall time, and HTTP polls
(``GET /v1/pipeline/{id}``) per pipeline. ``leapi-server`` and the static source server are separate
processes, so their work is not counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PIPELINES = 1_000
POLL_INTERVAL_S = 5.0
INITIAL_POLL_INTERVAL_S = 1.0
SERVER_WORKERS = 2

_CHILD = r"""
import asyncio, gc, json, os, sys, threading, time
import httpx, psutil

mode, base_url, api_key, source, count, poll, initial = sys.argv[1:8]
count, poll, initial = int(count), float(poll), float(initial)
os.environ["AIRFLOW_CONN_LEAPI_DEFAULT"] = json.dumps({"conn_type": "leapi", "host": base_url, "password": api_key})

from leapi_provider.hooks.leapi import LeapiHook
from leapi_provider.triggers.leapi import LeapiPipelineTrigger

polls = 0
original = LeapiHook.aget_pipeline
async def counted(self, pipeline_id):
    global polls
    polls += 1
    return await original(self, pipeline_id)
LeapiHook.aget_pipeline = counted

body = {"operations": [{"op": "preset/marketplace", "width": 240, "image_format": "JPEG"}]}
with httpx.Client(base_url=base_url, headers={"X-API-KEY": api_key}, timeout=60) as client:
    ids = []
    for i in range(count):
        answer = client.post("/v1/pipeline", json={**body, "source": {"http": {"url": f"{source}?n={i}"}}})
        answer.raise_for_status()
        ids.append(answer.json()["pipeline"]["id"])

async def run_one(trigger):
    events = trigger.run()
    event = await anext(events)
    await events.aclose()
    return event.payload

# Warm up (imports, connection lookup, first client) on one finished pipeline, outside the measurement.
with httpx.Client(base_url=base_url, headers={"X-API-KEY": api_key}, timeout=60) as client:
    while client.get(f"/v1/pipeline/{ids[0]}").json()["pipeline"]["status"] == "PROCESSING":
        time.sleep(0.05)
asyncio.run(run_one(LeapiPipelineTrigger(pipeline_ids=[ids[0]], end_time=time.time() + 60)))
polls = 0

end_time = time.time() + 3600
if mode == "one":
    triggers = [LeapiPipelineTrigger(pipeline_ids=ids, end_time=end_time, poll_interval=poll, initial_poll_interval=initial)]
else:
    triggers = [LeapiPipelineTrigger(pipeline_ids=[i], end_time=end_time, poll_interval=poll, initial_poll_interval=initial) for i in ids]

gc.collect()
process = psutil.Process()
baseline = process.memory_info().rss
peak = baseline
sampling = True
def sample():
    global peak
    while sampling:
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.02)
sampler = threading.Thread(target=sample, daemon=True)

async def main():
    return await asyncio.gather(*(run_one(t) for t in triggers))

cpu0, wall0 = time.process_time(), time.perf_counter()
sampler.start()
events = asyncio.run(main())
wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
sampling = False
sampler.join()
done = sum(e["counts"]["DONE"] for e in events)
print(json.dumps({
    "mode": mode, "pipelines": len(ids), "done": done, "events": len(events),
    "statuses": sorted({e["status"] for e in events}),
    "rss_growth_mib": (peak - baseline) / 2**20, "cpu_s": cpu, "wall_s": wall, "polls": polls,
}))
"""


def _measure(mode: str, base_url: str, api_key: str, source: str) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            mode,
            base_url,
            api_key,
            source,
            str(PIPELINES),
            str(POLL_INTERVAL_S),
            str(INITIAL_POLL_INTERVAL_S),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench child {mode} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run() -> str:
    from devkit.server import free_port, running_server
    from devkit.sources import write_sample_photo

    with tempfile.TemporaryDirectory() as tmp:
        write_sample_photo(Path(tmp) / "photo.jpg", "coffee", size=(160, 107), quality=80)
        port = free_port()
        sources = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", tmp, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with running_server(
                extra_args=(
                    "--workers",
                    str(SERVER_WORKERS),
                    "--rate-limit-per-minute",
                    "0",
                    "--monthly-quota",
                    "0",
                )
            ) as server:
                source = f"http://127.0.0.1:{port}/photo.jpg"
                for _ in range(100):
                    try:
                        httpx.get(source, timeout=1).raise_for_status()
                        break
                    except httpx.HTTPError:
                        time.sleep(0.05)
                one = _measure("one", server.base_url, server.api_key, source)
                many = _measure("many", server.base_url, server.api_key, source)
        finally:
            sources.terminate()
            sources.wait(10)

    for result in (one, many):
        if result["done"] != PIPELINES or result["statuses"] != ["success"]:
            raise RuntimeError(f"not every pipeline finished: {result}")

    def row(name: str, r: dict) -> str:
        return (
            f"| {name} | {r['events']:,} | {r['rss_growth_mib']:.1f} | {r['cpu_s']:.2f} | {r['wall_s']:.1f} | "
            f"{r['polls'] / r['pipelines']:.2f} |"
        )

    def ratio(key: str) -> float:
        return many[key] / one[key] if one[key] else float("inf")

    return "\n".join(
        [
            "## Trigger: one loop waiting for 1,000 pipelines",
            "",
            (
                f"{PIPELINES:,} one-image pipelines submitted to `leapi-server` ({SERVER_WORKERS} worker processes) on "
                f"127.0.0.1, then waited for in one asyncio loop (poll gaps {INITIAL_POLL_INTERVAL_S:g} s doubling to "
                f"{POLL_INTERVAL_S:g} s). Each way runs in a fresh interpreter; RSS growth is the peak above the level "
                "after submitting, CPU is the waiting process's own (the servers run elsewhere)."
            ),
            "",
            "| way to wait | triggers | peak RSS growth (MiB) | CPU (s) | wall (s) | HTTP polls per pipeline |",
            "|---|---:|---:|---:|---:|---:|",
            row("one `LeapiPipelineTrigger` for all ids", one),
            row("one trigger per pipeline (baseline)", many),
            "",
            (
                f"One trigger for the batch grew the loop's memory {ratio('rss_growth_mib'):.0f}x less and used "
                f"{ratio('cpu_s'):.1f}x less CPU than one trigger per pipeline. The 1,000-trigger loop is CPU-bound "
                "(1,000 hooks, each with its own HTTP client, connection pool and TLS context, and 1,000 connection "
                f"lookups): it reported the last pipeline {ratio('wall_s'):.1f}x later, and for the same reason it "
                f"polled less ({many['polls'] / many['pipelines']:.2f} vs {one['polls'] / one['pipelines']:.2f} polls "
                "per pipeline): most pipelines had already finished by the time it got to poll them. The one-trigger "
                "wall time is the server's processing time for the batch plus at most one poll gap."
            ),
        ]
    )


if __name__ == "__main__":
    print(run())
