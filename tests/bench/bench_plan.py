"""Benchmark: the catalog plan with change detection (``incremental``), 20,000 and 1,000,000 rows.

Three parts, every measurement in a fresh interpreter (its own CPU time and peak RSS), the source servers in
processes of their own (their CPU time read from ``/proc``):

1. **Where the time went.** 20,000 ``HEAD`` requests, before (the plan's old code: ``httpx.AsyncClient``,
   32 at once) and after (:mod:`leapi_provider.catalog.http_fingerprints`), against the server the
   Airflow bench serves sources from (``serve_directory``: ``http.server``, HTTP/1.0, a thread and a TCP
   connection per request) and against a fast keep-alive one (``devkit/source_hosts.py``).
   Floor: a plain asyncio script doing the same ``HEAD`` requests over the same number of connections.
2. **The plan.** ``plan_run`` end to end with ``incremental=True``, its phases as it logs them: a first run
   (no previous results) and a daily run (the previous results of every image, 10% of the sources
   changed since). Sources on 1 host (20,000 rows) and 2 hosts (1M rows), at the default per-host bound.
   Baseline in the same run: the plain script's ``HEAD`` requests over the same URLs.
3. **``s3://`` sources** against moto's S3 server: ``ListObjectsV2`` per key range (now) against one
   ``HeadObject`` per key on 32 threads (before), the same objects in the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
SMALL_ROWS = 20_000
LARGE_ROWS = 1_000_000
LARGE_HOSTS = 2
CHANGED_EVERY = 10  # the daily run: one source in 10 changed
S3_OBJECTS = 10_000
PLAN_TARGETS_S = {SMALL_ROWS: 10.0, LARGE_ROWS: 120.0}

_CHILD = r"""
import asyncio, hashlib, json, logging, os, resource, sys, time
from urllib.parse import urlsplit
import pyarrow.parquet as pq

mode, args = sys.argv[1], sys.argv[2:]


def old_http(urls):
    # The plan's change detection before this change (leapi_provider/catalog/fingerprints.py at cbfa36e).
    import httpx
    from leapi.transport import shared_tls_context

    async def one(client, semaphore, url):
        async with semaphore:
            try:
                head = await client.head(url)
                if head.status_code < 400 and (head.headers.get("ETag") or head.headers.get("Last-Modified")):
                    return True
                digest = hashlib.sha256()
                async with client.stream("GET", url) as response:
                    async for chunk in response.aiter_bytes():
                        digest.update(chunk)
                return response.status_code < 400
            except httpx.HTTPError:
                return False

    async def run():
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        semaphore = asyncio.Semaphore(32)
        async with httpx.AsyncClient(timeout=30, follow_redirects=True, limits=limits, verify=shared_tls_context()) as client:
            return await asyncio.gather(*(one(client, semaphore, u) for u in urls))

    return sum(asyncio.run(run()))


def floor(urls, per_host):
    # A plain script doing the same HEAD requests: per host, `per_host` keep-alive connections.
    by_host = {}
    for url in urls:
        parts = urlsplit(url)
        by_host.setdefault((parts.hostname, parts.port), []).append(parts.path)

    async def worker(host, port, paths, answered):
        writer = None
        for path in paths:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"HEAD {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            answered.append(head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"))
            if head.startswith(b"HTTP/1.0") or b"Connection: close" in head:  # (serve_directory closes)
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    async def run():
        answered = []
        jobs = []
        for (host, port), paths in by_host.items():
            shared = iter(paths)
            jobs += [worker(host, port, shared, answered) for _ in range(per_host)]
        await asyncio.gather(*jobs)
        return sum(answered)

    return asyncio.run(run())


def timed(work):
    t0, c0 = time.perf_counter(), time.process_time()
    out = work()
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, **out}


if mode in ("detect-old", "detect-new", "floor"):
    urls = pq.read_table(args[0])["url"].to_pylist()
    if mode == "detect-old":
        result = timed(lambda: {"ok": old_http(urls)})
    elif mode == "floor":
        result = timed(lambda: {"ok": floor(urls, int(args[1]))})
    else:
        from leapi_provider.catalog.fingerprints import DetectionPolicy, source_fingerprints
        policy = DetectionPolicy(per_host=int(args[1]))
        def new():
            found = source_fingerprints(urls, policy=policy)
            return {"ok": sum(f.fingerprint is not None for f in found.values()), "detail": found.stats.summary()}
        result = timed(new)
elif mode in ("s3-old", "s3-new"):
    from concurrent.futures import ThreadPoolExecutor
    from leapi_provider.catalog.fingerprints import source_fingerprints
    from leapi_provider.catalog.s3_fingerprints import s3_client
    from leapi_provider.catalog.sources import split_s3_uri
    uris = pq.read_table(args[0])["url"].to_pylist()
    client = s3_client("aws_default")
    def old():
        def one(uri):
            bucket, key = split_s3_uri(uri)
            head = client.head_object(Bucket=bucket, Key=key)
            return f"etag:{head.get('ETag')};size:{head.get('ContentLength')}"
        with ThreadPoolExecutor(max_workers=32) as pool:
            return {"fingerprints": list(pool.map(one, uris)), "requests": {"HeadObject": len(uris)}}
    def new():
        found = source_fingerprints(uris, aws_conn_id="aws_default")
        return {"fingerprints": [found[u].fingerprint for u in uris], "requests": dict(found.stats.requests)}
    result = timed(old if mode == "s3-old" else new)
    result["fingerprints"] = hashlib.sha256(json.dumps(result["fingerprints"]).encode()).hexdigest()
elif mode == "plan":
    import airflow.sdk  # (a task process has Airflow loaded before the plan starts)
    from leapi_provider.catalog.plan import plan_run
    from leapi_provider.catalog.settings import CatalogSettings
    from leapi_provider.catalog.storage import CatalogRun
    phases = {}
    class Phases(logging.Handler):
        def emit(self, record):
            if hasattr(record, "plan_phase"):
                phases[record.plan_phase] = record.plan_phase_seconds
                if record.plan_phase == "fingerprint":
                    phases["detail"] = record.getMessage()
    logger = logging.getLogger("leapi_provider.catalog.plan")
    logger.addHandler(Phases())
    logger.setLevel(logging.INFO)
    settings = CatalogSettings(**json.loads(args[0]))
    run = CatalogRun("bench_plan", args[1], args[2], args[1])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = timed(lambda: {"counts": plan_run(settings, run, max_map_length=1024)["counts"]})
    result["phases"] = phases
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
elif mode == "serve-directory":
    from devkit.sources import serve_directory
    with serve_directory(args[0]) as base_url:
        print(base_url, flush=True)
        sys.stdin.read()
    sys.exit(0)
print(json.dumps(result))
"""


def _child(*args: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench child {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def _server(command: list[str]) -> Iterator[tuple[str, int]]:
    """A source server in its own process; yields its base URL and pid."""
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip(), process.pid
    finally:
        process.terminate()
        process.wait(10)


def _fast_host() -> contextlib.AbstractContextManager[tuple[str, int]]:
    return _server([sys.executable, "-m", "devkit.source_hosts"])


def _cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _write_urls(path: Path, urls: list[str]) -> Path:
    pq.write_table(pa.table({"url": pa.array(urls, pa.string())}), path)
    return path


def _per_host() -> int:
    from leapi_provider.catalog.settings import DEFAULT_CHANGE_DETECTION_PER_HOST

    return DEFAULT_CHANGE_DETECTION_PER_HOST


def _root_cause(work: Path) -> list[str]:
    sources = work / "sources"
    sources.mkdir()
    for i in range(SMALL_ROWS):
        (sources / f"{i}.jpg").write_bytes(b"\xff\xd8" + bytes(1000))
    per_host = str(_per_host())
    rows = []
    serve_directory = [sys.executable, "-c", _CHILD, "serve-directory", str(sources)]
    with _server(serve_directory) as (directory_url, directory_pid), _fast_host() as (fast_url, fast_pid):
        servers = {
            "`serve_directory` (HTTP/1.0)": (directory_url, directory_pid),
            "fast keep-alive host": (fast_url, fast_pid),
        }
        for server, (base, pid) in servers.items():
            urls = _write_urls(work / "urls.parquet", [f"{base}/{i}.jpg" for i in range(SMALL_ROWS)])
            clients = {
                "before: `httpx.AsyncClient`, 32 at once": ("detect-old", str(urls)),
                f"after: per-host lanes, {per_host} per host": ("detect-new", str(urls), per_host),
                f"floor: plain asyncio script, {per_host} connections": ("floor", str(urls), per_host),
            }
            for client, args in clients.items():
                served_before = _cpu_s(pid)
                result = _child(*args)
                server_cpu = _cpu_s(pid) - served_before
                rows.append(
                    f"| {client} | {server} | {result['wall_s']:.1f} | {result['cpu_s'] / SMALL_ROWS * 1e6:.0f} | "
                    f"{server_cpu / SMALL_ROWS * 1e6:.0f} | {result['ok']:,} |"
                )
    return [
        f"### Where the time went: {SMALL_ROWS:,} `HEAD` requests to one local host",
        "",
        "| client | source server | wall (s) | client CPU per HEAD (us) | server CPU per HEAD (us) | answered |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
    ]


def _manifest(path: Path, rows: int, bases: list[str]) -> None:
    index = range(rows)
    urls = [f"{bases[i % len(bases)]}/catalog/{i % 997}/{i}.jpg" for i in index]
    table = pa.table(
        {
            "image_id": pa.array([f"sku-{i}" for i in index], pa.string()),
            "source_url": pa.array(urls, pa.string()),
            "preset": pa.array(["marketplace"] * rows, pa.string()),
        }
    )
    pq.write_table(table, path)


def _previous_results(results: Path, batches: list[str]) -> None:
    """The results a previous day's run would have left: every planned image ``done``, one source in
    :data:`CHANGED_EVERY` with another fingerprint than today's."""
    import pyarrow.compute as pc

    from leapi_provider import manifests

    planned = pa.concat_tables([pq.read_table(uri.removeprefix("file://")) for uri in batches])
    n = planned.num_rows
    changed = pa.array([i % CHANGED_EVERY == 0 for i in range(n)])
    fingerprint = pc.if_else(changed, pa.scalar("etag:yesterday"), planned["source_fingerprint"])
    planned = planned.set_column(
        planned.schema.get_field_index("source_fingerprint"), "source_fingerprint", fingerprint
    )
    planned = planned.append_column("status", pa.array(["done"] * n, pa.string()))
    manifests.write_result_table(planned, str(results), dag_run_id="yesterday", run_date="2026-03-31")


def _stats(base: str) -> dict:
    import httpx

    return httpx.get(f"{base}/__stats", timeout=30).json()


def _plan_case(work: Path, rows: int, bases: list[str]) -> list[str]:
    case = work / f"plan-{rows}"
    case.mkdir()
    _manifest(case / "manifest.parquet", rows, bases)
    settings = {
        "manifest": str(case / "manifest.parquet"),
        "results": str(case / "results"),
        "images": str(case / "images"),
        "incremental": True,
        "quota_guard": "off",
    }
    lines = []
    for label, run_id, day in (("first run", "first", "2026-04-01"), ("daily run", "daily", "2026-04-02")):
        heads_before = sum(_stats(b)["requests"].get("HEAD", 0) for b in bases)
        result = _child("plan", json.dumps(settings), run_id, day)
        heads = sum(_stats(b)["requests"].get("HEAD", 0) for b in bases) - heads_before
        phases, counts = result["phases"], result["counts"]
        if run_id == "first":
            plan = json.loads(next((case / "results" / "_runs").glob("*/plan.json")).read_text())
            _previous_results(case / "results", plan["batches"])
        lines.append(
            f"| {rows:,} rows, {len(bases)} host(s), {label} | **{result['wall_s']:.1f}** (<= "
            f"{PLAN_TARGETS_S[rows]:.0f}) | {phases['read and validate']:.1f} | {phases['fingerprint']:.1f} | "
            f"{phases['compare with previous results']:.1f} | {phases['credits']:.1f} | "
            f"{phases['write batches']:.1f} | {heads:,} | {counts['skipped_unchanged']:,} / "
            f"{counts['to_submit']:,} | {result['peak_rss_mb']:.0f} |"
        )
    urls = _write_urls(
        case / "urls.parquet", pq.read_table(case / "manifest.parquet")["source_url"].to_pylist()
    )
    floor = _child("floor", str(urls), str(_per_host()))
    lines.append(
        f"| {rows:,} rows: baseline, the plain script's {floor['ok']:,} HEADs | | | {floor['wall_s']:.1f} "
        "| | | | | | |"
    )
    return lines


def _plans(work: Path) -> list[str]:
    lines = [
        f"### The plan (`plan_run`, `incremental=True`, {_per_host()} requests at once per host)",
        "",
        (
            "| case | plan (s, target) | read + validate | fingerprint | compare with previous results "
            "| credits | write batches | HEADs at the servers | skipped unchanged / to submit | peak RSS (MiB) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with contextlib.ExitStack() as stack:
        hosts = [stack.enter_context(_fast_host()) for _ in range(LARGE_HOSTS)]
        bases = [base for base, _ in hosts]
        lines += _plan_case(work, SMALL_ROWS, bases[:1])
        lines += _plan_case(work, LARGE_ROWS, bases)
    return lines


def _s3(work: Path) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    from devkit.s3 import MotoS3Server, aws_connection_json

    moto = MotoS3Server(work / "moto.log")
    moto.start()
    try:
        client = moto.client()
        client.create_bucket(Bucket="bench-catalog")
        keys = [f"catalog/{i:06d}.jpg" for i in range(S3_OBJECTS)]
        with ThreadPoolExecutor(max_workers=10) as pool:  # (the client's connection pool holds 10)
            list(pool.map(lambda k: client.put_object(Bucket="bench-catalog", Key=k, Body=k.encode()), keys))
        uris = _write_urls(work / "uris.parquet", [f"s3://bench-catalog/{k}" for k in keys])
        env = {
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection_json(moto.endpoint_url),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        old = _child("s3-old", str(uris), env=env)
        new = _child("s3-new", str(uris), env=env)
    finally:
        moto.stop()
    same = "yes" if old["fingerprints"] == new["fingerprints"] else "**NO**"
    return [
        f"### `s3://` sources: {S3_OBJECTS:,} objects of one folder, against moto's S3 server",
        "",
        "| strategy | requests | wall (s) | x before |",
        "|---|---|---:|---:|",
        f"| before: one `HeadObject` per key, 32 threads | {_kinds(old['requests'])} | {old['wall_s']:.1f} | 1.00 |",
        (
            f"| now: `ListObjectsV2` per key range | {_kinds(new['requests'])} | {new['wall_s']:.1f} | "
            f"{new['wall_s'] / old['wall_s']:.2f} |"
        ),
        "",
        f"Same fingerprints from both: {same} (`etag:<ETag>;size:<bytes>`, so stored results still match).",
    ]


def _kinds(requests: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in sorted(requests.items()))


def run() -> str:
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        work = Path(tmp)
        root_cause = _root_cause(work)
        plans = _plans(work)
        s3 = _s3(work)
    intro = (__doc__ or "").split("\n\n", 1)[1].strip()
    return "\n".join(
        [
            "## The plan's change detection",
            "",
            intro,
            "",
            (
                f"The machine is shared: its 1-minute load average was {load:.1f} at the start and "
                f"{os.getloadavg()[0]:.1f} at the end ({time.perf_counter() - started:.0f} s later), on "
                f"{os.cpu_count()} cores. Compare the ratios within a table, not the absolute times."
            ),
            "",
            *root_cause,
            "",
            *plans,
            "",
            *s3,
        ]
    )


if __name__ == "__main__":
    print(run())
