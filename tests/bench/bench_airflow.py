"""Benchmark: ``marketplace_feed_etl`` under a real Airflow scheduler, against a plain client in the same run.

The stack is what ``airflow standalone`` runs (api-server, scheduler with the LocalExecutor at its default
parallelism, dag-processor, triggerer; SQLite), from :mod:`devkit.airflow_stack`, with leapi-server (2 worker
processes), moto's S3 server and a static source server, all on 127.0.0.1. Three cases:

* **small**: 1,000 JPEGs of 96 px on the long side, enhanced x2;
* **marketplace**: 200 photographs of 900x600, enhanced to 1800x1200 (about 0.3 s per image per core);
* **marketplace-500**: the same with 500 photographs (Airflow's cost is per run and task, not per image);
* **small-20k**: 20,000 JPEGs of 96 px (the run of issue 19; not in the default set: about 15 minutes).

``LEAPI_BENCH_CASES=small,marketplace`` runs some of them only (default: the first three).

Baseline, same server and images, measured right before each DAG run: a plain httpx client posts
pipelines of 10 URLs, polls them until terminal and downloads every result. The DAG's wall time runs from
the run's creation by the REST call that triggers it (``queued_at``) to its ``end_date``, both Airflow's. Also reported: task instances,
how many were deferred to the triggerer (from Airflow's event log, as ``make e2e`` checks), seconds of
Airflow overhead per task ((DAG - baseline) / tasks), status reads per pipeline and LEAPI API requests per
image (leapi-server's access log; result downloads are not API requests), the peak memory of the Airflow processes (PSS and RSS; the scheduler's family holds the executor's
workers and their task processes), and the parse time of every DAG file beyond ``import airflow.sdk``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.bench.bench_catalog_dag import _access_counts, _baseline

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "marketplace_feed_etl"
API_KEY = "bench-key"
BUCKET = "bench"
URLS_PER_PIPELINE = 10
#: The run before this change, measured as issue #13 reports it (same machine kind, same two cases).
BEFORE = {
    "small": {
        "ratio": "3.57x (99.5 s vs 27.8 s, issue 22's code, this machine under load)",
        "tasks": 10,
        "deferred": 0,
        "rss": "5.47 GiB",
        "reads": "3.50",
        "requests": "0.455",
    },
    "marketplace": {
        "ratio": "not measured",
        "tasks": "",
        "deferred": "",
        "rss": "-",
        "reads": "-",
        "requests": "-",
    },
    "marketplace-500": {
        "ratio": "not measured",
        "tasks": "",
        "deferred": "",
        "rss": "-",
        "reads": "-",
        "requests": "-",
    },
    "small-20k": {
        "ratio": "1.50x (449.5 s vs 300.0 s, issue 19)",
        "tasks": "",
        "deferred": "",
        "rss": "6.1 GiB",
        "reads": "18.3",
        "requests": "1.93",
    },
}
TARGETS = {"small": 3.0, "marketplace": 1.3, "marketplace-500": 1.3, "small-20k": 1.25}
#: Issue 19's budget: status reads per pipeline, API requests per image (at 10 URLs per pipeline).
READS_TARGET, REQUESTS_TARGET = 1.3, 0.3
PARSE_TARGET_S = 0.5


@dataclass(frozen=True)
class Case:
    name: str
    images: int
    description: str


CASES = (
    Case("small", 1000, "1,000 JPEGs, 96 px long side, enhanced x2"),
    Case("marketplace", 200, "200 photographs 900x600, enhanced to 1800x1200"),
    # The same images, more of them: Airflow's cost is per run and per task, not per image.
    Case("marketplace-500", 500, "500 photographs 900x600, enhanced to 1800x1200"),
    Case("small-20k", 20_000, "20,000 JPEGs, 96 px long side, enhanced x2"),
)
DEFAULT_CASES = ("small", "marketplace", "marketplace-500")


def _write_sources(case: Case, folder: Path) -> list[dict[str, Any]]:
    """The case's source images and their manifest rows (deterministic)."""
    from devkit.catalog import write_sample_images
    from devkit.sources import SAMPLE_PHOTOS, sample_photo

    if case.name.startswith("small"):
        images = write_sample_images(folder, case.images, long_sides=(96,), prefix=case.name)
        return [
            {"image_id": i.image_id, "file": i.file_name, "width": i.width * 2, "height": i.height * 2}
            for i in images
        ]
    rows = []
    photos = {name: sample_photo(name, size=(900, 600)) for name in SAMPLE_PHOTOS}
    for index in range(case.images):
        name = SAMPLE_PHOTOS[index % len(SAMPLE_PHOTOS)]
        file_name = f"{case.name}-{index:04d}-{name}.jpg"
        photos[name].save(folder / file_name, format="JPEG", quality=60 + index % 30)
        rows.append(
            {"image_id": f"{case.name}-{index:04d}", "file": file_name, "width": 1800, "height": 1200}
        )
    return rows


def _manifest_bytes(rows: list[dict[str, Any]], base_url: str) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "image_id": [r["image_id"] for r in rows],
            "source_url": [f"{base_url}/{r['file']}" for r in rows],
            "preset": ["marketplace"] * len(rows),
            "width": [r["width"] for r in rows],
            "height": [r["height"] for r in rows],
            "image_format": ["JPEG"] * len(rows),
            "quality": [85] * len(rows),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


@contextmanager
def _peak_memory(stack: Any) -> Iterator[dict[str, int]]:
    """Peak PSS of the scheduler (with the LocalExecutor's workers and their task processes) and of every
    Airflow process, sampled every 2 s while the block runs (PSS: the 32 forked workers share most pages,
    which RSS would count 32 times; sampling more often would cost the 2 cores measurable CPU)."""
    peak = {"scheduler": 0, "total": 0, "scheduler_rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(2.0):
            sizes = stack.process_rss_bytes(proportional=True)
            peak["scheduler"] = max(peak["scheduler"], sizes.get("scheduler", 0))
            peak["total"] = max(peak["total"], sum(sizes.values()))
            rss = stack.process_rss_bytes().get("scheduler", 0)
            peak["scheduler_rss"] = max(peak["scheduler_rss"], rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def _run_case(case: Case, *, stack: Any, server: Any, moto: Any, base_url: str, sources: Path) -> dict:
    rows = _write_sources(case, sources)
    urls = [f"{base_url}/{r['file']}" for r in rows]
    moto.client().put_object(
        Bucket=BUCKET, Key=f"{case.name}/manifest.parquet", Body=_manifest_bytes(rows, base_url)
    )
    operation = {"op": "preset/marketplace", "image_format": "JPEG", "quality": 85}
    with server.client(timeout=120) as client:
        baseline_s = 0.0
        # One pipeline shape per output size, as the DAG groups them (same operation = same pipeline).
        by_size: dict[tuple[int, int], list[str]] = {}
        for row, url in zip(rows, urls, strict=True):
            by_size.setdefault((row["width"], row["height"]), []).append(url)
        for (width, height), group in by_size.items():
            baseline_s += _baseline(client, group, operation | {"width": width, "height": height})[0]
    conf = {
        "manifest": f"s3://{BUCKET}/{case.name}/manifest.parquet",
        "results": f"s3://{BUCKET}/{case.name}/results",
        "images": f"s3://{BUCKET}/{case.name}/images",
        "export": f"s3://{BUCKET}/{case.name}/export",
        "urls_per_pipeline": URLS_PER_PIPELINE,
    }
    log_offset = len(server.logs())
    with _peak_memory(stack) as peak:
        run_id = stack.trigger(DAG_ID, conf)
        state = stack.wait_for_run(DAG_ID, run_id, timeout=max(900, case.images // 10))
    run = stack.api().get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json()
    # Airflow's own clock, from the trigger (the run is created queued) to the run's end: no polling delay.
    queued_at = datetime.fromisoformat(run["queued_at"])
    dag_s = (datetime.fromisoformat(run["end_date"]) - queued_at).total_seconds()
    requests = _access_counts(server.logs()[log_offset:])
    api_requests = sum(n for kind, n in requests.items() if not kind.startswith("GET /v1/tmp"))
    pipelines = -(-case.images // URLS_PER_PIPELINE)
    tis = stack.task_instances(DAG_ID, run_id)
    timeline = _timeline(stack.event_log(DAG_ID, run_id), since=queued_at)
    deferred = stack.deferred_task_instances(DAG_ID, run_id)
    return {
        "case": case,
        "state": state,
        "baseline_s": baseline_s,
        "dag_s": dag_s,
        "tasks": len(tis),
        "deferred": len(deferred),
        "requests_per_image": api_requests / case.images,
        "reads_per_pipeline": requests["GET /v1/pipeline/{id}"] / pipelines,
        "requests": requests,
        "timeline": timeline,
        "peak_scheduler": peak["scheduler"],
        "peak_total": peak["total"],
        "peak_scheduler_rss": peak["scheduler_rss"],
    }


def _model_line(r: dict[str, Any]) -> str:
    """What the cost model predicts for the case, beside what the run did."""
    from leapi_provider.catalog.settings import CatalogSettings
    from leapi_provider.catalog.sizing import estimate_run

    case, requests = r["case"], r["requests"]
    model = estimate_run(case.images, CatalogSettings(urls_per_pipeline=URLS_PER_PIPELINE))
    return (
        f"- {case.name}: batches {model.batches} (ran {r['tasks'] - 2}); submits {model.submits} "
        f"(ran {requests['POST /v1/pipeline']}); status reads {model.status_reads} "
        f"(ran {requests['GET /v1/pipeline/{id}']}); API requests per image {model.requests_per_image} "
        f"(ran {r['requests_per_image']:.3f})"
    )


def _timeline(events: list[dict[str, Any]], *, since: datetime) -> str:
    """``task state t, ...`` from the run's event log, t in seconds after ``since`` (the trigger)."""
    parts = []
    for row in events:
        if not row.get("task_id"):
            continue
        name = row["task_id"] + (f"[{row['map_index']}]" if (row.get("map_index") or -1) >= 0 else "")
        seconds = (datetime.fromisoformat(row["when"]) - since).total_seconds()
        parts.append(f"{name} {row['event']} {seconds:.1f}")
    return ", ".join(parts)


_PARSE_PROBE = """
import importlib.util, json, statistics, sys, time
import airflow.sdk  # the baseline: every DAG file pays it once per process anyway
times = {}
for path in sys.argv[1:]:
    runs = []
    for attempt in range(3):
        started = time.perf_counter()
        spec = importlib.util.spec_from_file_location(f"probe_{attempt}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        runs.append(time.perf_counter() - started)
    times[path] = runs[0]  # the first parse in a fresh process: what a dag-processor child pays
print(json.dumps(times))
"""


def parse_times(env: dict[str, str]) -> dict[str, float]:
    """Seconds to parse each DAG file in a fresh interpreter that has imported ``airflow.sdk``."""
    files = sorted(
        str(p.relative_to(REPO)) for d in ("dags", "example_dags") for p in (REPO / d).glob("*.py")
    )
    samples: dict[str, list[float]] = {f: [] for f in files}
    for _ in range(3):
        for path in files:  # one interpreter per file, so no file rides on another's imports
            done = subprocess.run(
                [sys.executable, "-c", _PARSE_PROBE, path],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"parsing {path} failed:\n{done.stderr[-2000:]}")
            samples[path].append(json.loads(done.stdout.strip().splitlines()[-1])[path])
    return {path: statistics.median(values) for path, values in samples.items()}


def measure(work: Path) -> tuple[list[dict], dict[str, float]]:
    import os

    from devkit.airflow_dags import leapi_connection_json
    from devkit.airflow_stack import AirflowStack
    from devkit.s3 import MotoS3Server, aws_connection_json
    from devkit.server import running_server
    from devkit.sources import serve_directory
    from leapi_provider.catalog.settings import LEAPI_POOL

    sources = work / "sources"
    sources.mkdir()
    moto = MotoS3Server(work / "moto.log")
    with (
        serve_directory(sources) as base_url,
        running_server(
            data_dir=work / "leapi",
            api_keys=(API_KEY,),
            extra_args=("--rate-limit-per-minute", "0", "--monthly-quota", "0"),
        ) as server,
    ):
        moto.start()
        try:
            moto.client().create_bucket(Bucket=BUCKET)
            env = {
                "AIRFLOW_CONN_LEAPI_DEFAULT": leapi_connection_json(server.base_url, API_KEY),
                "AIRFLOW_CONN_AWS_DEFAULT": aws_connection_json(moto.endpoint_url),
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            with AirflowStack(home=work / "airflow", dags_folders=[REPO / "dags"], env=env) as stack:
                stack.set_pool(LEAPI_POOL, 4)
                stack.wait_for_dag(DAG_ID)
                stack.unpause(DAG_ID)
                warm = _write_sources(Case("small", 4, "warm-up"), sources / "warm")
                with server.client(timeout=120) as client:  # the server's workers load the engine first
                    operation = {"op": "preset/marketplace", "width": 192, "height": 192}
                    _baseline(client, [f"{base_url}/warm/{r['file']}" for r in warm], operation)
                wanted = os.environ.get("LEAPI_BENCH_CASES", ",".join(DEFAULT_CASES)).split(",")
                results = [
                    _run_case(case, stack=stack, server=server, moto=moto, base_url=base_url, sources=sources)
                    for case in CASES
                    if case.name in wanted
                ]
            parse = parse_times({**os.environ, "AIRFLOW_HOME": str(work / "airflow")})
        finally:
            moto.stop()
    return results, parse


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-airflow-") as tmp:
        results, parse = measure(Path(tmp))
    lines = [
        "## The catalog under a real Airflow scheduler",
        "",
        (
            "`marketplace_feed_etl` triggered through the REST API on the stack `airflow standalone` runs "
            "(LocalExecutor at its defaults, SQLite; api-server, scheduler, dag-processor, triggerer), "
            "pool `leapi` of 4 slots, leapi-server with 2 worker processes, moto's S3 server. Baseline in "
            "the same run, right before each DAG run: a plain httpx client posting the same images in "
            f"pipelines of {URLS_PER_PIPELINE}, polling them and downloading every result. The DAG also "
            "validates and fingerprints the manifest, checks credits, uploads every image to S3 and writes "
            "the result table, the contact sheet and the feed export."
        ),
        "",
        (
            "| case | baseline (s) | DAG (s) | ratio (target) | before | tasks (before) | deferred (before) "
            f"| Airflow s per task | status reads per pipeline (<= {READS_TARGET}; before) "
            f"| API requests per image (<= {REQUESTS_TARGET}; before) "
            "| peak PSS: scheduler + executor / all Airflow | peak RSS of scheduler + executor (before) |"
        ),
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        case = r["case"]
        before = BEFORE[case.name]
        ratio = r["dag_s"] / r["baseline_s"]
        overhead = (r["dag_s"] - r["baseline_s"]) / max(r["tasks"], 1)
        lines.append(
            f"| {case.description} (run {r['state']}) | {r['baseline_s']:.1f} | {r['dag_s']:.1f} | "
            f"**{ratio:.2f}x** (<= {TARGETS[case.name]}x) | {before['ratio']} | {r['tasks']} "
            f"({before['tasks'] or '-'}) | {r['deferred']} ({before['deferred'] if before['deferred'] != '' else '-'}) "
            f"| {overhead:.1f} | **{r['reads_per_pipeline']:.2f}** ({before['reads']}) "
            f"| **{r['requests_per_image']:.3f}** ({before['requests']}) | {r['peak_scheduler'] / 2**30:.2f} / "
            f"{r['peak_total'] / 2**30:.2f} GiB | {r['peak_scheduler_rss'] / 2**30:.2f} GiB "
            f"({before['rss']}) |"
        )
    lines += ["", "Task timeline (Airflow's event log, seconds after the trigger):", ""]
    lines += [f"- {r['case'].name}: {r['timeline']}" for r in results]
    lines += [
        "",
        "The cost model (`leapi_provider.catalog.sizing.estimate_run`, docs/catalog.md) against the run:",
        "",
    ]
    lines += [_model_line(r) for r in results]
    lines += [
        "",
        "LEAPI requests by kind (`GET /v1/tmp/...` are the result downloads, not API requests):",
        "",
    ]
    for r in results:
        kinds = ", ".join(f"{k}: {v}" for k, v in r["requests"].items())
        lines.append(f"- {r['case'].name}: {kinds}")
    lines += [
        "",
        (
            "Parse time of each DAG file beyond `import airflow.sdk` (median of 3 fresh interpreters; target "
            f"<= {PARSE_TARGET_S} s; before: about 2 s for the catalog DAGs, which imported pyarrow.dataset "
            "and pandas):"
        ),
        "",
        "| DAG file | parse (s) |",
        "|---|---:|",
    ]
    lines += [f"| `{path}` | {seconds:.3f} |" for path, seconds in sorted(parse.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
