"""``make e2e``: ``marketplace_feed_etl`` under a real Airflow, headless, with nothing from the internet.

``python -m tests.e2e [--executor local|celery]`` starts, all on 127.0.0.1:

* a source-image server whose every GET waits ``--source-delay`` seconds (HEAD does not: change detection
  stays fast), so that the LEAPI pipelines outlast the batches' in-worker wait (``defer_after: 1`` in the
  conf) and the waits are deferred to the triggerer;
* ``leapi-server`` (2 workers, no rate limit, private sources allowed) and moto's S3 server;
* :class:`devkit.airflow_stack.AirflowStack` on ``dags/`` (LocalExecutor, or CeleryExecutor with Redis and two
  workers), the connections given as ``AIRFLOW_CONN_*`` variables, pool ``leapi`` of 4 slots.

Then, through Airflow's REST API: (1) trigger ``marketplace_feed_etl`` and wait for success; (2) prove from
the event log that at least one task was deferred to the triggerer and resumed; (3) check the result
table (``done`` per photograph, one ``error`` for the dead link, one ``rejected_row``), the contact sheet
and the credits spent (one per photograph); (4) trigger again: every photograph ``skipped_unchanged``,
0 credits; (5) clear the first run and wait for it again: 0 credits; (6) with ``--faults``, ``--runs`` fault
runs on the same Airflow (:mod:`tests.e2e.faults`: SIGKILLs of a batch task mid-submit and mid-transfer,
of the triggerer and of leapi-server, then the checks that nothing was lost or paid twice and no resumed
try was lost to Airflow's race); with ``--webhooks`` or ``--events``, the checks of
:mod:`tests.e2e.modes` (webhook-driven batches; a run started by a manifest landing in S3); (7) stop everything and check, by process ancestry
(:class:`devkit.airflow_processes.ProcessFamily`), that no process survived the graceful stop. Exits 0 with a
summary of timings, non-zero with the reason and the relevant log tails. State in ``.work/e2e/<executor>/``
(kept for a post-mortem, replaced by the next run).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import shutil
import signal
import sys
import time
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devkit.airflow_processes import ProcessFamily, describe_all
from devkit.airflow_stack import AirflowStack, AirflowStackError
from devkit.catalog import put_manifest, sample_catalog
from tests.e2e import API_KEY, BUCKET, MANIFEST_KEY, REGION, catalog_conf, connection_env, modes
from tests.e2e.faults import FAULT_ENV, FAULT_LOCAL_SETTINGS, FAULT_MANIFEST_KEY, FaultRun, FaultSettings

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "marketplace_feed_etl"
#: Room for one retry at the DAG's 2-minute retry delay: Airflow 3.3 can fail a try that resumes from a
#: deferral before the scheduler processed the deferring run's exit ("state mismatch"); the retry resumes
#: from the run's records (nothing is submitted twice) and the run succeeds.
RUN_TIMEOUT_S = 420.0


class E2EFailure(AssertionError):
    """A check failed; the message says which and what was found."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise E2EFailure(message)


class Timings:
    """Wall time per step, printed as the step ends and in the summary."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.steps: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"[{time.monotonic() - self.started:6.1f} s] {name} ...", flush=True)
        begun = time.monotonic()
        yield
        self.steps.append((name, time.monotonic() - begun))

    def summary(self) -> str:
        lines = [f"  {name:<44} {seconds:6.1f} s" for name, seconds in self.steps]
        return "\n".join([*lines, f"  {'total':<44} {time.monotonic() - self.started:6.1f} s"])


class _SlowSourceHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; every GET first waits ``delay_s`` (a slow origin)."""

    delay_s = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay_s)
        with contextlib.suppress(ConnectionError):  # the fetching leapi-server was killed (fault runs)
            super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


def slow_sources(folder: Path, delay_s: float) -> contextlib.AbstractContextManager[str]:
    from devkit.sources import serve_http

    handler = type("SlowSourceHandler", (_SlowSourceHandler,), {"delay_s": delay_s})
    return serve_http(functools.partial(handler, directory=str(folder)))


class Credits:
    """The LEAPI account's ``used`` counter (``GET /v1/me/usage/``): one credit per submitted image."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.last = self.used()

    def used(self) -> int:
        with self.server.client() as client:
            return client.get("/v1/me/usage/").json()["used"]

    def spent(self) -> int:
        """Credits used since the previous call (or since creation)."""
        now = self.used()
        spent, self.last = now - self.last, now
        return spent


class ResultTable:
    """The run's result rows and files in the moto bucket, read with s3fs (no Airflow in this process)."""

    def __init__(self, *, endpoint_url: str, s3: Any) -> None:
        self.endpoint_url = endpoint_url
        self.s3 = s3

    def rows(self, run_id: str, *, results: str = "results") -> list[dict[str, Any]]:
        import pyarrow.compute as pc
        import s3fs

        from leapi_provider import manifests

        fs = s3fs.S3FileSystem(
            key="testing",
            secret="testing",
            endpoint_url=self.endpoint_url,
            client_kwargs={"region_name": REGION},
            skip_instance_cache=True,  # a fresh listing: the previous run's files are cached otherwise
        )
        table = manifests.read_result_tables(types.SimpleNamespace(fs=fs, path=f"{BUCKET}/{results}"))
        return table.filter(pc.equal(table["dag_run_id"], run_id)).to_pylist()

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def statuses(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(row["status"] for row in rows)


def expect_statuses(rows: list[dict[str, Any]], expected: dict[str, int], what: str) -> None:
    found = statuses(rows)
    errors = [f"{r['image_id']}: {r['status']} {r['error']}" for r in rows if r["status"] == "error"]
    check(
        found == Counter(expected), f"{what}: statuses {dict(found)}, expected {expected}; errors: {errors}"
    )


class Scenario:
    """The six steps of the module docstring on started servers."""

    def __init__(self, *, stack: AirflowStack, credits: Credits, results: ResultTable, images: int) -> None:
        self.stack = stack
        self.credits = credits
        self.results = results
        self.images = images
        self.conf = catalog_conf(min_images_per_batch=4, defer_after=1)

    def run_dag(self, *, clear: str | None = None) -> str:
        if clear:
            self.stack.clear_run(DAG_ID, clear)
            run_id = clear
        else:
            run_id = self.stack.trigger(DAG_ID, self.conf)
        state = self.stack.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_S)
        if state != "success":
            raise E2EFailure(f"run {run_id} ended {state}:\n{self.stack.run_report(DAG_ID, run_id)}")
        for ti in [] if clear else self.stack.task_instances(DAG_ID, run_id):  # (clearing adds a try)
            if ti["try_number"] > 1:
                print(f"  note: {ti['task_id']}[{ti['map_index']}] needed try {ti['try_number']} (a retry)")
        return run_id

    def first_run(self) -> str:
        run_id = self.run_dag()
        print(f"  run {run_id}: success")
        return run_id

    def check_deferrals(self, run_id: str) -> list[dict[str, Any]]:
        deferred = self.stack.deferred_task_instances(DAG_ID, run_id)
        check(bool(deferred), f"no task instance of {run_id} was deferred (event log has no 'deferred' row)")
        for entry in deferred:
            print(f"  {entry['task_id']}[{entry['map_index']}] try {entry['try_number']}: deferred "
                  f"{entry['deferrals']}x to the triggerer for {entry['deferred_s']:.1f} s, "
                  f"{'resumed' if entry['resumed'] else 'NOT resumed'}")  # fmt: skip
        stuck = [e for e in deferred if not e["resumed"]]
        check(not stuck, f"deferred but never resumed by a worker: {stuck}")
        return deferred

    def check_first_results(self, run_id: str) -> None:
        rows = self.results.rows(run_id)
        expect_statuses(rows, {"done": self.images, "error": 1, "rejected_row": 1}, "first run")
        dead = [row for row in rows if row["status"] == "error"]
        check(dead[0]["image_id"] == "sku-dead-link", f"the error row is not the dead link: {dead}")
        sheets = [key for key in self.results.keys("results/") if key.endswith(".png")]
        check(bool(sheets), "no contact sheet PNG under results/")
        head = self.results.s3.get_object(Bucket=BUCKET, Key=sheets[0])["Body"].read(8)
        check(head == b"\x89PNG\r\n\x1a\n", f"{sheets[0]} is not a PNG")
        spent = self.credits.spent()
        check(spent == self.images, f"first run spent {spent} credits, expected {self.images}")
        print(f"  {dict(statuses(rows))}; contact sheet s3://{BUCKET}/{sheets[0]}; {spent} credits")

    def second_run(self) -> str:
        run_id = self.run_dag()
        rows = self.results.rows(run_id)
        expected = {"skipped_unchanged": self.images, "error": 1, "rejected_row": 1}
        expect_statuses(rows, expected, "second run")
        spent = self.credits.spent()
        check(spent == 0, f"second run spent {spent} credits, expected 0")
        print(f"  run {run_id}: success; {dict(statuses(rows))}; 0 credits")
        return run_id

    def cleared_run(self, run_id: str) -> None:
        self.run_dag(clear=run_id)
        rows = self.results.rows(run_id)
        found = statuses(rows)
        good = found["done"] + found["skipped_unchanged"]
        check(good == self.images, f"cleared run: {dict(found)}, expected {self.images} done or skipped")
        spent = self.credits.spent()
        check(spent == 0, f"the cleared run spent {spent} credits, expected 0")
        print(f"  run {run_id} cleared and re-run: success; {dict(found)}; 0 credits")


def start_servers(stack_: contextlib.ExitStack, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Sources, leapi-server and moto, stopped by ``stack_``; the manifest uploaded."""
    from devkit.s3 import MotoS3Server
    from devkit.server import running_server

    base_url = stack_.enter_context(slow_sources(work / "sources", args.source_delay))
    server = stack_.enter_context(
        running_server(
            data_dir=work / "leapi-server",
            api_keys=(API_KEY,),
            extra_args=(
                "--workers",
                "2",
                "--rate-limit-per-minute",
                "0",
                *(modes.webhook_server_args() if args.webhooks else ()),
            ),
            allow_private_sources=True,
        )
    )
    moto = MotoS3Server(work / "moto.log")
    moto.start()
    stack_.callback(moto.stop)
    s3 = moto.client()
    table = sample_catalog(work / "sources", base_url, args.images)
    put_manifest(s3, table, bucket=BUCKET, key=MANIFEST_KEY)
    extras: dict[str, Any] = {}
    if args.webhooks:
        from devkit.redis import running_redis

        extras["redis"] = stack_.enter_context(running_redis(work / "redis"))
    if args.events:
        extras["queue_url"] = modes.event_queue(s3, modes.sqs_client(moto.endpoint_url))
    fault_ids: list[str] = []
    if args.faults:  # (the same photographs and more: the files are written deterministically)
        faults = sample_catalog(work / "sources", base_url, FaultSettings().images)
        put_manifest(s3, faults, bucket=BUCKET, key=FAULT_MANIFEST_KEY)
        fault_ids = faults.column("image_id").to_pylist()
    print(f"  sources {base_url} ({args.source_delay:g} s per GET) | leapi-server {server.base_url} | "
          f"moto S3 {moto.endpoint_url} | manifest: {table.num_rows} rows"
          + (f", fault manifest: {len(fault_ids)} rows" if fault_ids else ""))  # fmt: skip
    return {"server": server, "moto": moto, "s3": s3, "fault_ids": fault_ids, "sources": base_url, **extras}


def run(args: argparse.Namespace, timings: Timings) -> None:
    work = REPO / ".work" / "e2e" / args.executor
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    executor = {"local": "LocalExecutor", "celery": "CeleryExecutor"}[args.executor]
    with contextlib.ExitStack() as servers:
        with timings.step("start sources, leapi-server, moto S3"):
            started = start_servers(servers, work, args)
        env = connection_env(
            leapi_url=started["server"].base_url, api_key=API_KEY, s3_endpoint=started["moto"].endpoint_url
        )
        stack = AirflowStack(
            home=work / "airflow",
            dags_folders=[REPO / "dags"],
            executor=executor,
            env={**env, **(FAULT_ENV if args.faults else {})},
            local_settings=FAULT_LOCAL_SETTINGS if args.faults else None,
        )
        if args.webhooks:
            stack.extra_env.update(modes.webhook_env(stack, started["redis"]))
        if args.events:
            stack.extra_env.update(modes.events_env(started["queue_url"]))
        # Also when start() fails half-way; leftovers are reported by main(), not raised over the error.
        servers.callback(functools.partial(stack.stop, raise_on_leftovers=False))
        try:
            with timings.step(f"start Airflow ({executor})"):
                stack.start()
                stack.set_pool("leapi", 4)
                for dag_id in (DAG_ID, *([modes.ARRIVALS_DAG_ID] if args.events else [])):
                    stack.wait_for_dag(dag_id)
                    stack.unpause(dag_id)
            print(f"  api-server {stack.api_url}; logs in {stack.logs_dir.relative_to(REPO)}")
            if not args.faults_only:
                scenario_steps(stack, started, args, timings)
            if args.events:
                with timings.step("event-driven start: a manifest lands in S3"):
                    modes.check_event_start(
                        stack, started["s3"], work / "sources", started["sources"], timeout=RUN_TIMEOUT_S
                    )
            if args.faults:
                with timings.step(f"6. {args.runs} fault run(s)"):
                    fault_runs(stack, started, args)
        except (E2EFailure, AirflowStackError, TimeoutError) as exc:
            if not isinstance(exc, AirflowStackError):  # whose messages carry the relevant tails already
                exc.add_note(stack.log_tails(["scheduler", "triggerer", *_worker_logs(stack)]))
            exc.add_note(f"----- leapi-server -----\n{started['server'].logs()[-2000:]}")
            raise
        with timings.step("stop everything"):
            leftovers = stack.stop(raise_on_leftovers=False)
    check(not leftovers, f"Airflow processes that survived the graceful stop (killed since): {leftovers}")


def fault_runs(stack: AirflowStack, started: dict[str, Any], args: argparse.Namespace) -> None:
    """``args.runs`` fault runs back to back on this Airflow: a line each, a total, the first failure's
    evidence (see :mod:`tests.e2e.faults`)."""
    results = ResultTable(endpoint_url=started["moto"].endpoint_url, s3=started["s3"])
    credits = Credits(started["server"])
    passed, races, began, failed = 0, 0, time.monotonic(), []
    for number in range(1, args.runs + 1):
        run = FaultRun(
            number=number,
            stack=stack,
            server=started["server"],
            credits=credits,
            results=results,
            manifest_ids=started["fault_ids"],
            settings=FaultSettings(),
        )
        run.run()
        print(f"  {run.summary()}", flush=True)
        races += len(run.facts.get("races", []))
        if not run.failures:
            passed += 1
            continue
        failed.append(f"fault run {number} failed: " + "; ".join(run.failures))
        if not args.keep_going:
            break
        print(f"  {failed[-1]}\n{run.evidence()}", flush=True)
    runs = passed + len(failed)
    print(f"  fault runs: {passed} of {runs} passed, {races} resumed try(ies) lost to the race, "
          f"{time.monotonic() - began:.0f} s ({(time.monotonic() - began) / runs:.0f} s per run)")  # fmt: skip
    if failed:
        raise E2EFailure("\n".join(failed) + ("" if args.keep_going else "\n" + run.evidence()))


def _worker_logs(stack: AirflowStack) -> list[str]:
    return [f"worker-{index}" for index in range(1, stack.celery_workers + 1)]


def scenario_steps(
    stack: AirflowStack, started: dict[str, Any], args: argparse.Namespace, timings: Timings
) -> None:
    results = ResultTable(endpoint_url=started["moto"].endpoint_url, s3=started["s3"])
    scenario = Scenario(stack=stack, credits=Credits(started["server"]), results=results, images=args.images)
    log_start = len(started["server"].logs())
    with timings.step("1. first run (REST trigger)"):
        first = scenario.first_run()
    if args.webhooks:
        with timings.step("webhooks: status reads, resumes after the last webhook"):
            failures = modes.check_webhook_run(stack, started["server"], first, log_start=log_start)
            check(not failures, "webhook targets missed: " + "; ".join(failures))
    with timings.step("2. deferrals from the event log"):
        scenario.check_deferrals(first)
    with timings.step("3. result table, contact sheet, credits"):
        scenario.check_first_results(first)
    with timings.step("4. second run: unchanged, 0 credits"):
        scenario.second_run()
    with timings.step("5. clear the first run: 0 credits"):
        scenario.cleared_run(first)
    rss, pss = stack.process_rss_bytes(), stack.process_rss_bytes(proportional=True)
    print(
        "  memory now (RSS / PSS, children included): "
        + ", ".join(f"{name} {rss[name] / 2**20:.0f}/{pss.get(name, 0) / 2**20:.0f} MiB" for name in rss)
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--executor", choices=("local", "celery"), default="local")
    parser.add_argument("--images", type=int, default=16, help="sample photographs in the manifest")
    parser.add_argument("--source-delay", type=float, default=0.75, help="seconds each source GET waits")
    parser.add_argument("--faults", action="store_true", help="then fault runs (tests/e2e/faults.py)")
    parser.add_argument("--runs", type=int, default=1, help="fault runs back to back (with --faults)")
    parser.add_argument("--keep-going", action="store_true", help="run every fault run, failed or not")
    parser.add_argument("--faults-only", action="store_true", help="skip steps 1-5 (with --faults)")
    parser.add_argument(
        "--webhooks", action="store_true", help="batches woken by webhooks (tests/e2e/modes.py)"
    )
    parser.add_argument(
        "--events", action="store_true", help="then a run started by a manifest landing in S3"
    )
    args = parser.parse_args(argv)
    # Everything started from here on descends from this process: the final check finds any that survived.
    family = ProcessFamily.of_this_process()
    family.start_sampling()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind (and stop everything) like Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started as a background job
    timings = Timings()
    try:
        run(args, timings)
        left = _leftovers(family)
        check(not left, f"processes left after the e2e run (killed since): {left}")
    except (E2EFailure, AirflowStackError, TimeoutError) as exc:
        notes = "\n".join(getattr(exc, "__notes__", []))
        print(f"\nE2E FAILED: {exc}\n{notes}", file=sys.stderr)
        print(f"\nprocesses left: {_leftovers(family) or 'none'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nE2E INTERRUPTED; processes left: {_leftovers(family) or 'none'}", file=sys.stderr)
        return 130
    faults = f", {args.runs} fault run(s)" if args.faults else ""
    faults += ", webhooks" if args.webhooks else ""
    faults += ", event-driven start" if args.events else ""
    print(f"\nE2E PASSED ({args.executor}, {args.images} photographs{faults}); no process left. Timings:")
    print(timings.summary())
    return 0


def _leftovers(family: ProcessFamily) -> list[str]:
    """Processes descended from this one (or in a session one of them opened) still running after a few
    seconds' grace for exiting ones; they are killed, and described."""
    family.stop_sampling()
    left = describe_all(family.wait_gone(5))
    family.kill_survivors()
    return left


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
