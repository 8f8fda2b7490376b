"""Benchmark: the catalog at scale (issue #19 item 5). ``marketplace_feed_etl`` on 100,000 small images
under a real Airflow scheduler, against two baselines in the same run, and a docs-only run under a rate limit.

**Sources.** :mod:`tests.bench.scale_sources`: 300 JPEGs of 64-96 px served under one distinct URL per
image (and per phase, so no phase fetches another's URLs), each with its own bytes and ETag, from a uvicorn
process of its own. Every image is enhanced to fit 128x128 (one operation, so pipelines hold exactly 10).

**Stack.** What ``bench_airflow`` runs (:class:`devkit.airflow_stack.AirflowStack`: LocalExecutor at its
defaults, SQLite, api-server, scheduler, dag-processor, triggerer), pool ``leapi`` of 4 slots, leapi-server
with 2 worker processes and no rate limit, moto's S3 server.

**Phases of the scale case**, one after another against the same leapi-server (moto is reset between them,
so each starts on an empty bucket):

1. the DAG (``urls_per_pipeline`` 10, the DAG's other params at their defaults);
2. the fair baseline (:mod:`tests.bench.scale_fair`): the same work in one competent asyncio script;
3. the plain client the bench has always had (``bench_catalog_dag._baseline``): sequential submits, one
   poller, downloads at the end, no S3; it polls in submission order (see ``_baseline``'s ``in_order``).

**The docs case**: ``--compat docs`` leapi-server with ``--rate-limit-per-minute`` (300), 5,000 images, its
own Airflow; every request the server saw (status reads and usage included) is counted per sliding minute.

Sizes: ``LEAPI_BENCH_SCALE_IMAGES`` (default 100,000), ``LEAPI_BENCH_SCALE_DOCS_IMAGES`` (5,000),
``LEAPI_BENCH_SCALE_DOCS_RATE`` (300), ``LEAPI_BENCH_SCALE_WEBHOOK_IMAGES`` (100,000);
``LEAPI_BENCH_SCALE_CASES=scale,docs`` picks cases (``webhooks`` adds the webhook case, below);
``LEAPI_BENCH_SCALE_BASELINES=fair,plain`` picks the scale case's baselines (empty: the DAG phase
alone, for a change that only moves the DAG's own figures);
``LEAPI_BENCH_SCALE_WORKDIR`` keeps the work folder (logs, airflow.db, the raw ``results.json``).
The measurement and report live in :mod:`tests.bench.scale_measure` and :mod:`tests.bench.scale_report`;
``python -m tests.bench.bench_scale --render results.json`` prints the report of a saved run.

**The webhook case** (``webhooks``, :func:`webhooks_case`, issue #21 item 5): the DAG phase alone with
webhooks on (a signing leapi-server, the receiver on the api-server, a redis-server); its report
(:mod:`tests.bench.webhooks_report`) gives API requests per image and the seconds from the last webhook to
the run's end. ``python -m tests.bench scale_webhooks`` (:mod:`tests.bench.bench_scale_webhooks`) runs it
alone into its own section of docs/benchmarks.md.

**Another case** is one more function like :func:`docs_case`: start the
leapi-server it needs, start Airflow with :func:`_start_airflow` (its ``env`` carries the connections),
call :func:`run_dag_phase` with the run's extra params, and add its own facts (e.g. the last webhook's time
from the server's log) to the case's dict; the report reads the same keys for every DAG run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

# (imported up front, all of them: a run of 100,000 images takes over an hour, and a module edited meanwhile
# must not change a phase that has not started yet)
from tests.bench import bench_catalog_dag, scale_fair, scale_report
from tests.bench import scale_measure as m
from tests.bench.scale_sources import Variant

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "marketplace_feed_etl"
API_KEY = "bench-key"
BUCKET = "bench"
URLS_PER_PIPELINE = 10
VARIANTS = 300
OUTPUT_BOX = 128
OPERATION = {
    "op": "preset/marketplace",
    "width": OUTPUT_BOX,
    "height": OUTPUT_BOX,
    "image_format": "JPEG",
    "quality": 85,
}
POOL_SLOTS = 4


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def manifest_rows(base_url: str, variants: list[Variant], images: int, tag: str) -> list[dict[str, Any]]:
    """``images`` manifest rows, variant cycling, one distinct source URL each (``tag`` names the phase)."""
    from tests.bench.scale_sources import SOURCE_PREFIX

    return [
        {
            "image_id": f"{tag}-{index:07d}",
            "source_url": f"{base_url}{SOURCE_PREFIX}{tag}-{index:07d}/{variants[index % len(variants)].file_name}",
        }
        for index in range(images)
    ]


def _manifest_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(rows)
    table = pa.table(
        {
            "image_id": [r["image_id"] for r in rows],
            "source_url": [r["source_url"] for r in rows],
            "preset": ["marketplace"] * n,
            "width": [OUTPUT_BOX] * n,
            "height": [OUTPUT_BOX] * n,
            "image_format": ["JPEG"] * n,
            "quality": [85] * n,
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


class Bench:
    """One case's running parts and the raw facts gathered so far (saved to ``results.json`` as they come)."""

    def __init__(self, work: Path, facts: dict[str, Any]) -> None:
        self.work = work
        self.facts = facts
        self.cpu_pids: dict[str, list[int]] = {}

    def save(self) -> None:
        (self.work / "results.json").write_text(json.dumps(self.facts, indent=1, default=str))

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far per component (the bench process itself as ``bench client``)."""
        times = os.times()
        used = {name: m.cpu_seconds(pids) for name, pids in self.cpu_pids.items()}
        return used | {"bench client": times.user + times.system}


def _stack_env(server_url: str, moto_url: str) -> dict[str, str]:
    from devkit.airflow_dags import leapi_connection_json
    from devkit.s3 import aws_connection_json

    return {
        "AIRFLOW_CONN_LEAPI_DEFAULT": leapi_connection_json(server_url, API_KEY),
        "AIRFLOW_CONN_AWS_DEFAULT": aws_connection_json(moto_url),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _reset_bucket(moto: Any) -> None:
    """Empty moto (all of its state) and create the bucket again: every phase starts on an empty store."""
    import httpx

    httpx.post(f"{moto.endpoint_url}/moto-api/reset", timeout=600).raise_for_status()
    moto.client().create_bucket(Bucket=BUCKET)


def run_dag_phase(
    bench: Bench, *, stack: Any, server: Any, moto: Any, rows: list[dict], name: str, **params: Any
) -> dict:
    """Trigger the DAG on ``rows`` (``params``: more of the run's params) and gather everything the report
    needs about the run."""
    images = len(rows)
    moto.client().put_object(Bucket=BUCKET, Key=f"{name}/manifest.parquet", Body=_manifest_bytes(rows))
    conf = {
        "manifest": f"s3://{BUCKET}/{name}/manifest.parquet",
        "results": f"s3://{BUCKET}/{name}/results",
        "images": f"s3://{BUCKET}/{name}/images",
        "export": f"s3://{BUCKET}/{name}/export",
        "urls_per_pipeline": URLS_PER_PIPELINE,
        **params,
    }
    offset = m.log_size(server.log_path)
    cpu_before, load_before = bench.cpu(), os.getloadavg()
    processes = stack._processes  # the component processes: ancestry roots for the sampler
    airflow_pids = [p.pid for p in processes.values()]
    timeout = 900 + images * 0.2
    with m.sample_processes(processes["scheduler"].pid, processes["triggerer"].pid, airflow_pids) as peaks:
        run_id = stack.trigger(DAG_ID, conf)
        state = m.wait_for_run_end(stack, DAG_ID, run_id, timeout=timeout, every_s=5 if images > 5000 else 1)
    cpu_after, load_after = bench.cpu(), os.getloadavg()
    accesses, _ = m.read_access_log(server.log_path, offset)
    facts = _dag_facts(stack, run_id, accesses)
    count, size, latest = m.list_objects(moto.client(), BUCKET, f"{name}/images/")
    facts |= {
        "images": images,
        "state": state,
        "objects": count,
        "object_bytes": size,
        "last_object_at": latest,
        "cpu_s": {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after},
        "load": [load_before[0], load_after[0], peaks.max_load],
        "pss_tasks": sorted(peaks.tasks.values(), reverse=True),
        "pss_triggerer": max((v[0] for v in peaks.triggerer.values()), default=0),
        "pss_airflow_total": peaks.airflow_total,
        "metadata": m.metadata_rows(stack.home / "airflow.db", dag_id=DAG_ID, run_id=run_id),
        "rate_limit_waits": m.rate_limit_waits(stack.logs_dir / "tasks"),
        "result_table": _result_table(stack, moto, run_id),
        "params": {k: v for k, v in conf.items() if not isinstance(v, str) or not v.startswith("s3://")},
    }
    return facts


def _dag_facts(stack: Any, run_id: str, accesses: list[m.Access]) -> dict[str, Any]:
    """Times, tasks and requests of the run, and each batch's timeline (seconds after the trigger)."""
    from datetime import datetime

    run = stack.api().get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json()
    queued = datetime.fromisoformat(run["queued_at"]).timestamp()
    ended = datetime.fromisoformat(run["end_date"]).timestamp()
    times = m.task_times(stack.event_log(DAG_ID, run_id))
    tis = stack.task_instances(DAG_ID, run_id)
    downloads = [a for a in accesses if a.kind == m.GET_TMP]
    batches = {}
    for ti in tis:
        if ti["task_id"] != "batch":
            continue
        ids = set(_xcom(stack, run_id, "batch", "pipeline_ids", ti["map_index"]) or [])
        mine = [a.at for a in downloads if a.tmp_pipeline_id in ids]
        span = times.spans.get(f"batch[{ti['map_index']}]", {})
        batches[ti["map_index"]] = {
            "pipelines": len(ids),
            "start": span["start"].timestamp() - queued if span.get("start") else None,
            "first_transfer": min(mine) - queued if mine else None,
            "last_transfer": max(mine) - queued if mine else None,
            "end": span["end"].timestamp() - queued if span.get("end") else None,
            "running_s": span.get("running_s"),
            "deferrals": span.get("deferrals"),
            "state": ti["state"],
        }
    plan = times.spans.get("plan", {})
    return {
        "run_id": run_id,
        "dag_s": ended - queued,
        "ended_at": ended,
        # (its last try's: a try that died under load and its retry delay are not the plan's cost)
        "plan_s": (plan["end"] - plan["try_start"]).total_seconds() if plan.get("end") else None,
        "task_states": sorted({f"{ti['task_id']}: {ti['state']}" for ti in tis}),
        "task_instances": len(tis),
        "retried": sorted(ti["task_id"] for ti in tis if (ti.get("try_number") or 0) > 1),
        # (a task process's title names its task instance's id)
        "ti_names": {
            ti["id"]: ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "") for ti in tis
        },
        "starts": times.starts,
        "deferrals": times.deferrals,
        "slot_s": times.slot_s,
        "requests": m.counts_by_kind(accesses),
        "accepted_posts": sum(a.kind == m.POST_PIPELINE and a.status == 200 for a in accesses),
        "responses_429": sum(a.status == 429 for a in accesses),
        "last_download_at": max((a.at for a in downloads), default=None),
        "batches": dict(sorted(batches.items())),
        "max_per_minute": m.max_per_window([a.at for a in accesses if a.kind != m.GET_TMP])[0],
        "submit_s": _submit_s(accesses, batches=len(batches)),
        "max_per_minute_all": m.max_per_window([a.at for a in accesses])[0],
    }


def _submit_s(accesses: list[m.Access], *, batches: int) -> float | None:
    """Seconds one submit held its batch's worker: the median gap between the run's accepted submits,
    times the batches that submit at once (the model's ``submit_s``)."""
    import itertools
    import statistics

    times = sorted(a.at for a in accesses if a.kind == m.POST_PIPELINE and a.status == 200)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    return statistics.median(gaps) * min(POOL_SLOTS, max(batches, 1)) if gaps else None


def _xcom(stack: Any, run_id: str, task_id: str, key: str, map_index: int = -1) -> Any:
    response = stack.api().get(
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
        params={"map_index": map_index},
    )
    if response.status_code != 200:
        return None
    value = response.json().get("value")
    return json.loads(value) if isinstance(value, str) else value


def _result_table(stack: Any, moto: Any, run_id: str) -> dict[str, Any]:
    """The run's result table: files, rows, bytes and rows by status (read back from the bucket)."""
    import io

    import pyarrow.parquet as pq

    finalized = _xcom(stack, run_id, "finalize", "return_value") or {}
    s3 = moto.client()
    rows, size, statuses = 0, 0, {}
    for uri in finalized.get("result_files", []):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        table = pq.read_table(io.BytesIO(body), columns=["status"])
        rows, size = rows + table.num_rows, size + len(body)
        for status in table["status"].to_pylist():
            statuses[status] = statuses.get(status, 0) + 1
    return {
        "files": len(finalized.get("result_files", [])),
        "rows": rows,
        "bytes": size,
        "by_status": statuses,
    }


def run_fair_phase(bench: Bench, *, server: Any, moto: Any, rows: list[dict]) -> dict[str, Any]:
    offset = m.log_size(server.log_path)
    cpu_before, load_before = bench.cpu(), os.getloadavg()
    outcome = scale_fair.fair_baseline(
        base_url=server.base_url,
        api_key=API_KEY,
        manifest=rows,
        operation=OPERATION,
        s3_endpoint=moto.endpoint_url,
        bucket=BUCKET,
        prefix="fair",
    )
    cpu_after = bench.cpu()
    accesses, _ = m.read_access_log(server.log_path, offset)
    return {
        "seconds": outcome.seconds,
        "rows": outcome.rows,
        "done": outcome.done,
        "objects": outcome.objects,
        "table_bytes": outcome.table_bytes,
        "requests": m.counts_by_kind(accesses),
        "cpu_s": {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after},
        "load": [load_before[0], os.getloadavg()[0]],
    }


def run_plain_phase(bench: Bench, *, server: Any, rows: list[dict]) -> dict[str, Any]:
    offset = m.log_size(server.log_path)
    cpu_before, load_before = bench.cpu(), os.getloadavg()
    with server.client(timeout=120) as client:
        seconds, pipelines = bench_catalog_dag._baseline(
            client, [r["source_url"] for r in rows], OPERATION, in_order=True
        )
    cpu_after = bench.cpu()
    accesses, _ = m.read_access_log(server.log_path, offset)
    return {
        "seconds": seconds,
        "done": sum(
            r.get("status") == "SUCCESS" or bool(r.get("output_object"))
            for p in pipelines
            for r in p["results"]
        ),
        "requests": m.counts_by_kind(accesses),
        "cpu_s": {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after},
        "load": [load_before[0], os.getloadavg()[0]],
    }


def _start_airflow(
    bench: Bench, stack_home: Path, server: Any, moto: Any, exits: ExitStack, *, more_env: Any = None
) -> Any:
    """Airflow on ``dags/``; ``more_env(stack)``: more environment, made once the stack's URL is known."""
    from devkit.airflow_stack import AirflowStack
    from leapi_provider.catalog.settings import LEAPI_POOL

    stack = AirflowStack(
        home=stack_home, dags_folders=[REPO / "dags"], env=_stack_env(server.base_url, moto.endpoint_url)
    )
    if more_env is not None:
        stack.extra_env.update(more_env(stack))
    # (a scheduler that outlives the graceful stop is killed all the same; its leftovers must not throw
    # away the measurements of a run that took an hour)
    exits.callback(stack.stop, raise_on_leftovers=False)
    stack.start()
    stack.set_pool(LEAPI_POOL, POOL_SLOTS)
    stack.wait_for_dag(DAG_ID)
    stack.unpause(DAG_ID)
    bench.cpu_pids["airflow"] = [p.pid for p in stack._processes.values()]
    return stack


def _warm_up(server: Any, sources: str, variants: list[Variant]) -> None:
    """The server's workers load the engine first (not part of any phase)."""
    with server.client(timeout=120) as client:
        bench_catalog_dag._baseline(
            client, [r["source_url"] for r in manifest_rows(sources, variants, 4, "warm")], OPERATION
        )


def scale_case(bench: Bench, *, source_server: Any, variants: list[Variant], moto: Any, images: int) -> None:
    from devkit.server import running_server

    sources = source_server.base_url
    facts = bench.facts.setdefault("scale", {"images": images})
    server_args = ("--workers", "2", "--rate-limit-per-minute", "0", "--monthly-quota", "0")
    with ExitStack() as exits:
        server = exits.enter_context(
            running_server(data_dir=bench.work / "leapi-scale", api_keys=(API_KEY,), extra_args=server_args)
        )
        bench.cpu_pids["leapi-server"] = [server.process.pid]
        stack = _start_airflow(bench, bench.work / "airflow-scale", server, moto, exits)
        _warm_up(server, sources, variants)
        facts["source_requests_before"] = source_server.stats()
        facts["dag"] = run_dag_phase(
            bench,
            stack=stack,
            server=server,
            moto=moto,
            rows=manifest_rows(sources, variants, images, "dag"),
            name="scale",
        )
        facts["source_requests_after_dag"] = source_server.stats()
        bench.save()
        baselines = os.environ.get("LEAPI_BENCH_SCALE_BASELINES", "fair,plain").split(",")
        if "fair" in baselines:
            _reset_bucket(moto)
            facts["fair"] = run_fair_phase(
                bench, server=server, moto=moto, rows=manifest_rows(sources, variants, images, "fair")
            )
            bench.save()
        if "plain" in baselines:
            _reset_bucket(moto)
            facts["plain"] = run_plain_phase(
                bench, server=server, rows=manifest_rows(sources, variants, images, "plain")
            )
            bench.save()


def docs_case(
    bench: Bench, *, sources: str, variants: list[Variant], moto: Any, images: int, rate: int
) -> None:
    from devkit.server import running_server

    facts = bench.facts.setdefault("docs", {"images": images, "rate_per_minute": rate})
    server_args = ("--workers", "2", "--rate-limit-per-minute", str(rate), "--monthly-quota", "0")
    with ExitStack() as exits:
        server = exits.enter_context(
            running_server(
                data_dir=bench.work / "leapi-docs", api_keys=(API_KEY,), extra_args=server_args, compat="docs"
            )
        )
        bench.cpu_pids["leapi-server"] = [server.process.pid]
        stack = _start_airflow(bench, bench.work / "airflow-docs", server, moto, exits)
        _warm_up(server, sources, variants)  # (its one submit is far below the limit)
        _reset_bucket(moto)
        facts["dag"] = run_dag_phase(
            bench,
            stack=stack,
            server=server,
            moto=moto,
            rows=manifest_rows(sources, variants, images, "docs"),
            name="docs",
            # (the docs show no usage body, so a docs-only server's is unreadable)
            quota_guard="off",
            # (what a user with this account says: the plan sizes the batches by it)
            api_requests_per_minute=rate,
        )
        bench.save()


def webhooks_case(bench: Bench, *, sources: str, variants: list[Variant], moto: Any, images: int) -> None:
    """The DAG with ``LEAPI_FEED_WEBHOOKS_CONN_ID`` set: a signing leapi-server, the receiver on the
    api-server, a real redis-server (issue #21 item 5). Adds, per run: the webhook deliveries the server
    made and when the last one ended (so the report can give the time from the last webhook to the
    run's end)."""
    from devkit.redis import running_redis
    from devkit.server import running_server
    from tests.e2e import modes

    facts = bench.facts.setdefault("webhooks", {"images": images})
    server_args = ("--workers", "2", "--rate-limit-per-minute", "0", "--monthly-quota", "0",
                   *modes.webhook_server_args())  # fmt: skip
    with ExitStack() as exits:
        server = exits.enter_context(
            running_server(
                data_dir=bench.work / "leapi-webhooks", api_keys=(API_KEY,), extra_args=server_args
            )
        )
        redis = exits.enter_context(running_redis(bench.work / "redis"))
        bench.cpu_pids["leapi-server"] = [server.process.pid]
        stack = _start_airflow(
            bench, bench.work / "airflow-webhooks", server, moto, exits,
            more_env=lambda stack: modes.webhook_env(stack, redis),
        )  # fmt: skip
        _warm_up(server, sources, variants)
        _reset_bucket(moto)
        rows = manifest_rows(sources, variants, images, "hooks")
        facts["dag"] = run_dag_phase(bench, stack=stack, server=server, moto=moto, rows=rows, name="webhooks")
        facts["webhooks"] = _webhook_deliveries(server, stack, facts["dag"]["run_id"])
        bench.save()


def _webhook_deliveries(server: Any, stack: Any, run_id: str) -> dict[str, Any]:
    """The run's pipelines' webhooks as leapi-server recorded them: counts by outcome, the last one's end."""
    from tests.e2e.modes import delivery_ends

    ids = [
        pid
        for ti in stack.task_instances(DAG_ID, run_id)
        if ti["task_id"] == "batch"
        for pid in _xcom(stack, run_id, "batch", "pipeline_ids", ti["map_index"]) or []
    ]
    ends = [end for pid in ids for end in delivery_ends(server, pid)]
    return {"pipelines": len(ids), "delivered": len(ends), "last_webhook_at": max(ends, default=None)}


def measure(work: Path, cases: list[str] | None = None) -> dict[str, Any]:
    """Run ``cases`` (default ``LEAPI_BENCH_SCALE_CASES``, else ``scale,docs``); the raw facts."""
    from devkit.s3 import MotoS3Server
    from tests.bench.scale_sources import serve_scale_sources, write_variants

    cases = cases or os.environ.get("LEAPI_BENCH_SCALE_CASES", "scale,docs").split(",")
    bench = Bench(work, {"started": time.time(), "load_at_start": os.getloadavg(), "cases": cases})
    variants = write_variants(work / "variants", VARIANTS)
    moto = MotoS3Server(work / "moto.log")
    with serve_scale_sources(work / "variants", log_path=work / "sources.log") as source_server:
        sources = source_server.base_url
        moto.start()
        try:
            _reset_bucket(moto)
            bench.cpu_pids = {"moto": [moto.process.pid], "sources": [source_server.pid]}
            if "scale" in cases:
                scale_case(
                    bench,
                    source_server=source_server,
                    variants=variants,
                    moto=moto,
                    images=_env_int("LEAPI_BENCH_SCALE_IMAGES", 100_000),
                )
            if "docs" in cases:
                docs_case(
                    bench,
                    sources=sources,
                    variants=variants,
                    moto=moto,
                    images=_env_int("LEAPI_BENCH_SCALE_DOCS_IMAGES", 5000),
                    rate=_env_int("LEAPI_BENCH_SCALE_DOCS_RATE", 300),
                )
            if "webhooks" in cases:
                webhooks_case(
                    bench,
                    sources=sources,
                    variants=variants,
                    moto=moto,
                    images=_env_int("LEAPI_BENCH_SCALE_WEBHOOK_IMAGES", 100_000),
                )
        finally:
            moto.stop()
    bench.facts["finished"] = time.time()
    bench.save()
    return bench.facts


def merged_results(paths: list[Path]) -> dict[str, Any]:
    """One report's facts from the ``results.json`` of runs that measured different cases (the first
    run's start and load head the report; each case keeps its own)."""
    merged: dict[str, Any] = {}
    for path in paths:
        facts = json.loads(path.read_text())
        cases = {case: facts[case] for case in ("scale", "docs") if case in facts}
        merged = {**facts, **merged, **cases}
        merged.setdefault("runs", []).append(
            {"cases": list(cases), "started": facts["started"], "load_at_start": facts["load_at_start"]}
        )
    return merged


def run() -> str:
    def render(facts: dict[str, Any]) -> str:
        from tests.bench import webhooks_report

        ran = facts.get("scale") or facts.get("docs")
        return (scale_report.render(facts) if ran else "") + webhooks_report.render(facts)

    kept = os.environ.get("LEAPI_BENCH_SCALE_WORKDIR")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        return render(measure(Path(kept)))
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        return render(measure(Path(tmp)))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="The scale bench (make bench runs it as: tests.bench scale)."
    )
    parser.add_argument(
        "--render",
        type=Path,
        nargs="+",
        help="print the report of saved results.json files (cases run apart: their cases merged); measure nothing",
    )
    args = parser.parse_args()
    print(scale_report.render(merged_results(args.render)) if args.render else run())
