"""``make e2e FAULTS=1``: ``marketplace_feed_etl`` under SIGKILLs, on the e2e's real Airflow.

One fault run triggers the DAG over the fault manifest (:data:`FAULT_IMAGES` photographs, a dead link and a
bad row; two URLs per pipeline, batches of six, transfers one image at a time, so that each phase lasts long
enough to be hit; ``defer_after: 0``, so that every try defers once it has submitted) and, watching from outside, SIGKILLs once each of:

1. **a batch task mid-submit**: the first batch task process that leapi-server's access log shows POSTing a
   pipeline (so at least one was accepted and more are to come);
2. **the triggerer while batches are deferred**: its whole process tree, once the REST API shows a batch
   ``deferred`` at two consecutive polls; restarted :attr:`FaultSettings.triggerer_down_s` later, as a
   supervisor would (a restarted triggerer takes over the dead one's triggers after
   ``[triggerer] triggerer_health_check_threshold``, 15 s here);
3. **leapi-server while pipelines are PROCESSING**: once the triggerer is back and a pipeline the harness
   saw polled answers ``PROCESSING``; restarted on the same data dir and port
   :attr:`FaultSettings.server_down_s` later;
4. **a batch task mid-transfer**: the first process of another batch (still on its first try) that the access
   log shows downloading a result (``GET /v1/tmp/p/<pipeline id>/...``).

**Finding a task's process without the provider's help.** Airflow titles every task process ``airflow worker
-- <task instance id>`` (``setproctitle``); the harness walks the scheduler's descendants (ancestry) for
those titles, maps each to its batch through the REST API's task-instance ids, and notes the client ports
each process holds to leapi-server. An access-log line is attributed to a batch by its client port, or, for
result downloads, by the pipeline id in the URL (pipelines are attributed by the batch's own polls).

**Checks** (:meth:`FaultRun.check`): the run ends ``success``; every manifest row has exactly one result row;
every photograph is ``done``, the dead link ``error``, the bad row ``rejected_row``; the credits used (the
server's usage endpoint) equal the ``done`` rows; no batch used its last retry; every fault landed; and no
resumed try was lost to Airflow's race (see :func:`race_events`).

``--runs N`` repeats the fault run N times on the same Airflow (new DAG runs, each with its own results,
images and export prefixes, so nothing is skipped as unchanged): one summary line per run, a total, and
the evidence of the first failure, where it stops (``--keep-going``: the evidence of each failure, and
on to the end, to measure how often a failure happens).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from devkit.airflow_stack import AirflowStack

FAULT_IMAGES = 48
FAULT_MANIFEST_KEY = "manifests/faults.parquet"
DAG_ID = "marketplace_feed_etl"
FAULT_RUN_TIMEOUT_S = 900.0
#: Shorter than the DAG's 2 minutes (a cluster policy, :data:`FAULT_LOCAL_SETTINGS`), to keep a fault run
#: short, but long enough that the retry of the batch killed mid-submit comes once leapi-server has worked
#: off the run's backlog (about a minute on 2 quiet cores): its remaining pipelines then finish within
#: seconds of its deferral, the window of Airflow 3.3's deferral race. (With 10 s, the retry's pipelines
#: queued behind the backlog and it stayed deferred 30-60 s: 0 races in 10 runs.)
RETRY_DELAY_S = 60
FAULT_LOCAL_SETTINGS = f'''"""Cluster policy of the e2e fault run (tests/e2e/faults.py): retries come sooner."""
from datetime import timedelta


def task_policy(task):
    task.retry_delay = timedelta(seconds={RETRY_DELAY_S})
'''
#: A restarted triggerer takes over a dead one's triggers once that one's heartbeat is this old (default 30).
FAULT_ENV = {"AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "15"}
#: The scheduler's words when an executor reports a try's exit after the task instance moved on: here, a
#: deferring try's exit processed after its resumed try was already queued or running (Airflow 3.3's race).
RACE_MESSAGE = "finished with state success, but the task instance's state attribute is"
LOST_TRY_MESSAGE = "Task Instance not found"

_ACCESS_LINE = re.compile(r'127\.0\.0\.1:(\d+) - "(\w+) (\S+) HTTP')
_PIPELINE_PATH = re.compile(r"^/v1/pipeline/(\d+)$")
_TMP_PATH = re.compile(r"^/v1/tmp/p/(\d+)/")
#: How long a client port seen held by a task process is attributed to it (access lines come a little later).
_PORT_MEMORY_S = 10.0
_TASK_TITLE = re.compile(r"airflow worker -- ([0-9a-f-]{36})")


@dataclass(frozen=True)
class FaultSettings:
    """How a fault run is shaped (see the module docstring)."""

    images: int = FAULT_IMAGES
    triggerer_down_s: float = 5.0
    server_down_s: float = 2.0

    def conf(self, run_number: int) -> dict[str, Any]:
        from tests.e2e import BUCKET, catalog_conf

        base = f"s3://{BUCKET}/faults/{run_number}"
        return catalog_conf(
            manifest=f"s3://{BUCKET}/{FAULT_MANIFEST_KEY}",
            results=f"{base}/results",
            images=f"{base}/cdn",
            export=f"{base}/export",
            urls_per_pipeline=2,
            min_images_per_batch=6,
            transfer_concurrency=1,
            # Every try defers as soon as it has submitted: a retry whose pipelines finish within seconds
            # (leapi-server idle by then) gives Airflow 3.3's deferral race its window.
            defer_after=0,
        )


@dataclass(frozen=True)
class Request:
    """One ``uvicorn.access`` line of leapi-server."""

    port: int
    method: str
    path: str


class AccessLog:
    """The access lines leapi-server appends to its log (one file across restarts) since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> list[Request]:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        found = []
        for line in complete.decode(errors="replace").splitlines():
            if match := _ACCESS_LINE.search(line):
                found.append(Request(int(match[1]), match[2], match[3].split("?", 1)[0]))
        return found


class TaskProcesses:
    """Task processes found by ancestry from the components that run tasks (the scheduler's LocalExecutor
    or the Celery workers), titled ``airflow worker -- <ti id>``, and the client ports each holds to
    leapi-server (remembered after the connection closes)."""

    def __init__(self, *, runner_pids: list[int], server_port: int) -> None:
        self.runners = [psutil.Process(pid) for pid in runner_pids]
        self.server_port = server_port
        self._port_owner: dict[int, tuple[str, float]] = {}  # client port -> (ti id, when last held)
        self._titles: dict[tuple[int, float], str | None] = {}

    def scan(self) -> dict[str, psutil.Process]:
        """Task instance id -> its live task process; notes their connections to leapi-server."""
        found = {}
        for process in self._descendants():
            ti_id = self._ti_id(process)
            if ti_id is None:
                continue
            found[ti_id] = process
            with contextlib.suppress(psutil.Error):
                for conn in process.net_connections(kind="tcp"):
                    if conn.raddr and conn.raddr.port == self.server_port:
                        self._port_owner[conn.laddr.port] = (ti_id, time.monotonic())
        return found

    def owner(self, port: int) -> str | None:
        """The task instance whose process held client ``port`` lately (ephemeral ports get reused)."""
        ti_id, when = self._port_owner.get(port, ("", 0.0))
        return ti_id if time.monotonic() - when < _PORT_MEMORY_S else None

    def _descendants(self) -> list[psutil.Process]:
        found = []
        for runner in self.runners:
            with contextlib.suppress(psutil.Error):
                found += runner.children(recursive=True)
        return found

    def _ti_id(self, process: psutil.Process) -> str | None:
        try:
            key = (process.pid, process.create_time())
            if key not in self._titles or self._titles[key] is None:  # a fresh fork is titled a moment later
                match = _TASK_TITLE.search(" ".join(filter(None, process.cmdline())))
                self._titles[key] = match[1] if match else None
            return self._titles[key]
        except psutil.Error:
            return None


@dataclass
class Fault:
    """One fault of a run: what was killed, when and what was seen around it."""

    name: str
    landed_at: float | None = None
    detail: str = ""
    batch: int | None = None
    try_number: int = 0
    before: int = 0  # the target batch's requests of this phase before the kill
    after: int = 0  # ... and after it (its retry's)

    def summary(self) -> str:
        if self.landed_at is None:
            return f"{self.name}: DID NOT LAND"
        retried = f", {self.after} by its retry" if self.batch is not None else ""
        return f"{self.name} {self.detail}{retried}"


@dataclass
class Batches:
    """What the harness knows of the run's batch tasks (REST polls and attributed requests)."""

    by_ti_id: dict[str, tuple[int, int]] = field(default_factory=dict)  # ti id -> (map index, try)
    states: dict[int, dict[str, Any]] = field(default_factory=dict)  # map index -> REST row
    deferred_streak: int = 0
    pipeline_batch: dict[int, int] = field(default_factory=dict)
    #: Every pipeline id the harness has seen: read by anyone (a task, the triggerer) or in a batch's XCom.
    known_pipelines: set[int] = field(default_factory=set)
    posts: Counter[int] = field(default_factory=Counter)
    downloads: Counter[int] = field(default_factory=Counter)

    def update(self, rows: list[dict[str, Any]]) -> None:
        batches = [row for row in rows if row["task_id"] == "batch"]
        for row in batches:
            self.by_ti_id[row["id"]] = (row["map_index"], row["try_number"])
            self.states[row["map_index"]] = row
        deferred = any(row["state"] == "deferred" for row in batches)
        self.deferred_streak = self.deferred_streak + 1 if deferred else 0


class FaultRun:
    """One fault run of ``marketplace_feed_etl`` (see the module docstring).

    :param number: the run's number (its S3 prefixes).
    :param stack: the running Airflow.
    :param server: the running leapi-server (``devkit.server.RunningServer``).
    :param credits: the account's credit counter (``tests.e2e.__main__.Credits``).
    :param results: the result-table reader (``tests.e2e.__main__.ResultTable``).
    :param manifest_ids: the fault manifest's ``image_id`` s.
    """

    def __init__(
        self,
        *,
        number: int,
        stack: AirflowStack,
        server: Any,
        credits: Any,
        results: Any,
        manifest_ids: list[str],
        settings: FaultSettings,
    ) -> None:
        self.number = number
        self.stack = stack
        self.server = server
        self.credits = credits
        self.results = results
        self.manifest_ids = manifest_ids
        self.settings = settings
        self.run_id = ""
        self.state = ""
        self.started = 0.0
        self.wall_s = 0.0
        self.batches = Batches()
        self.faults = {name: Fault(name) for name in ("submit", "triggerer", "leapi-server", "transfer")}
        self._restart_at: dict[str, float] = {}
        self._terminal_pipelines: set[int] = set()
        self.failures: list[str] = []
        self.facts: dict[str, Any] = {}
        self._races: dict[tuple[int, int], str] = {}

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> None:
        """Trigger, inject the faults while the run goes, wait for its end; then :meth:`check`."""
        self.credits.spent()  # reset the counter: this run's credits only
        log = AccessLog(self.server.log_path)
        tasks = TaskProcesses(runner_pids=self.stack.task_runner_pids(), server_port=self.server.port)
        self.started = time.monotonic()
        self.run_id = self.stack.trigger(DAG_ID, self.settings.conf(self.number))
        next_poll = 0.0
        deadline = self.started + FAULT_RUN_TIMEOUT_S
        while True:
            now = time.monotonic()
            self._restart_due(now)
            if now >= next_poll:
                next_poll = now + 1.0
                self.stack.check_alive()
                self.batches.update(self.stack.task_instances(DAG_ID, self.run_id))
                self.state = self.stack.run_state(DAG_ID, self.run_id)
                if self.state in ("success", "failed") and not self._restart_at:
                    break
                self._maybe_kill_triggerer(now)
                self._maybe_kill_server(now)
            processes = tasks.scan()
            for request in log.read():
                self._on_request(request, tasks, processes)
            if now > deadline:
                self.state = f"still {self.state} after {FAULT_RUN_TIMEOUT_S:.0f} s"
                break
            time.sleep(0.05)
        self.wall_s = time.monotonic() - self.started
        self.check()

    def _restart_due(self, now: float) -> None:
        for name, when in list(self._restart_at.items()):
            if now >= when:
                if name == "leapi-server":
                    self.server.start(port=self.server.port)
                else:
                    self.stack.restart(name)
                del self._restart_at[name]

    def _on_request(
        self, request: Request, tasks: TaskProcesses, processes: dict[str, psutil.Process]
    ) -> None:
        batch_try = self.batches.by_ti_id.get(tasks.owner(request.port) or "")
        if match := _PIPELINE_PATH.match(request.path):
            self.batches.known_pipelines.add(int(match[1]))
            if batch_try is not None and request.method == "GET":
                self.batches.pipeline_batch.setdefault(int(match[1]), batch_try[0])
        elif request.path == "/v1/pipeline" and request.method == "POST" and batch_try is not None:
            self.batches.posts[batch_try[0]] += 1
            self._maybe_kill_task("submit", batch_try, self.batches.posts, processes)
        elif (match := _TMP_PATH.match(request.path)) and request.method == "GET":
            batch = self.batches.pipeline_batch.get(int(match[1]))
            batch = batch if batch is not None or batch_try is None else batch_try[0]
            if batch is not None:
                self.batches.downloads[batch] += 1
                try_number = self.batches.states.get(batch, {}).get("try_number", 0)
                self._maybe_kill_task("transfer", (batch, try_number), self.batches.downloads, processes)

    # -- the faults ---------------------------------------------------------------------------------

    def _maybe_kill_task(
        self,
        name: str,
        batch_try: tuple[int, int],
        counts: Counter[int],
        processes: dict[str, psutil.Process],
    ) -> None:
        fault, (batch, try_number) = self.faults[name], batch_try
        if fault.landed_at is not None:
            if fault.batch == batch:
                fault.after += 1
            return
        if try_number != 1 or batch == self.faults["submit"].batch:
            return  # a second kill of one batch would spend its last retry: the harness's doing, not a bug
        ti_id = next((ti for ti, (index, tried) in self.batches.by_ti_id.items() if index == batch
                      and tried == try_number and ti in processes), None)  # fmt: skip
        if ti_id is None:
            return
        process = processes[ti_id]
        with contextlib.suppress(psutil.Error):
            process.kill()
            fault.landed_at = time.monotonic() - self.started
            fault.batch, fault.try_number, fault.before = batch, try_number, counts[batch]
            what = "POST /v1/pipeline" if name == "submit" else "result download(s)"
            fault.detail = (f"batch[{batch}] try {try_number} (pid {process.pid}) at {fault.landed_at:.1f} s, "
                            f"after {fault.before} {what}")  # fmt: skip

    def _maybe_kill_triggerer(self, now: float) -> None:
        fault = self.faults["triggerer"]
        if fault.landed_at is not None or self.batches.deferred_streak < 2:
            return
        deferred = sum(row["state"] == "deferred" for row in self.batches.states.values())
        killed = self.stack.kill("triggerer")
        fault.landed_at = now - self.started
        self._restart_at["triggerer"] = now + self.settings.triggerer_down_s
        fault.detail = (f"at {fault.landed_at:.1f} s with {deferred} batch(es) deferred "
                        f"({len(killed)} processes), restarted {self.settings.triggerer_down_s:g} s later")  # fmt: skip

    def _maybe_kill_server(self, now: float) -> None:
        fault = self.faults["leapi-server"]
        if fault.landed_at is not None or self.faults["triggerer"].landed_at is None or self._restart_at:
            return
        processing = self._processing_pipelines()
        if not processing:
            return
        self.server.kill()
        fault.landed_at = now - self.started
        self._restart_at["leapi-server"] = now + self.settings.server_down_s
        fault.detail = (f"at {fault.landed_at:.1f} s with pipeline(s) {processing[:6]} PROCESSING, "
                        f"restarted on the same data dir and port {self.settings.server_down_s:g} s later")  # fmt: skip

    def _processing_pipelines(self) -> list[int]:
        """Pipelines of the run that leapi-server still reports ``PROCESSING`` (asked directly). The ids come
        from the batches' ``pipeline_ids`` XCom (pushed as the API accepts them) and from every status read
        (in-order and probe reads rarely meet a running pipeline, so reads alone would seldom name one)."""
        for map_index, row in self.batches.states.items():
            if row["state"] in ("deferred", "up_for_retry", "running"):
                ids = self.stack.xcom_value(DAG_ID, self.run_id, "batch", "pipeline_ids", map_index)
                self.batches.known_pipelines.update(int(i) for i in ids or ())
        processing = []
        with self.server.client(timeout=5) as client:
            for pipeline_id in sorted(self.batches.known_pipelines - self._terminal_pipelines):
                response = client.get(f"/v1/pipeline/{pipeline_id}")
                if response.status_code != 200:
                    continue
                body = response.json()
                if (body.get("pipeline") or body).get("status") == "PROCESSING":
                    processing.append(pipeline_id)
                else:
                    self._terminal_pipelines.add(pipeline_id)
        return processing

    # -- the checks ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Fill :attr:`failures` (empty: the run passed) and :attr:`facts`."""
        fail = self.failures.append
        if self.state != "success":
            fail(f"run {self.run_id} ended {self.state}")
        for fault in self.faults.values():
            if fault.landed_at is None:
                fail(f"fault {fault.name!r} did not land (the run was too short for it)")
        rows = self.results.rows(self.run_id, results=f"faults/{self.number}/results")
        found = Counter(row["status"] for row in rows)
        per_image = Counter(row["image_id"] for row in rows)
        missing = sorted(set(self.manifest_ids) - set(per_image))
        doubled = sorted(image for image, count in per_image.items() if count > 1)
        if missing or doubled or len(per_image) != len(self.manifest_ids):
            fail(f"result rows: {len(missing)} image(s) missing {missing[:5]}, doubled {doubled[:5]}")
        photographs = len(self.manifest_ids) - 2
        expected = Counter({"done": photographs, "error": 1, "rejected_row": 1})
        if found != expected:
            errors = [f"{r['image_id']}: {r['error']}" for r in rows if r["status"] == "error"][:5]
            fail(f"statuses {dict(found)}, expected {dict(expected)}; errors: {errors}")
        by_status = {row["image_id"]: row["status"] for row in rows}
        if by_status.get("sku-dead-link") != "error" or by_status.get("sku-bad-preset") != "rejected_row":
            fail(f"dead link {by_status.get('sku-dead-link')}, bad row {by_status.get('sku-bad-preset')}")
        self._check_images([row for row in rows if row["status"] == "done"])
        spent = self.credits.spent()
        if spent != found["done"]:
            fail(f"{spent} credits used for {found['done']} done rows (paid twice or lost)")
        self._check_tries()
        killed = {(f.batch, f.try_number) for f in self.faults.values() if f.batch is not None}
        self._races = race_events(self.stack, self.run_id, killed=killed)
        races = list(self._races.values())
        if races:
            fail(f"{len(races)} resumed try(ies) lost to Airflow's race: {races}")
        deferrals = self.stack.deferred_task_instances(DAG_ID, self.run_id)  # each a chance for the race
        self.facts |= {"statuses": dict(found), "credits": spent, "races": races, "deferrals": len(deferrals)}

    def _check_images(self, done: list[dict[str, Any]]) -> None:
        """Every ``done`` row's ``output_uri`` is an object of ``output_bytes`` bytes (a kill mid-transfer
        left no row pointing at a missing or partial image)."""
        from botocore.exceptions import ClientError

        wrong = []
        for row in done:
            bucket, _, key = (row["output_uri"] or "s3:///").removeprefix("s3://").partition("/")
            try:
                size = self.results.s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
            except ClientError as exc:
                size = exc.response.get("Error", {}).get("Code", "missing")
            if size != row["output_bytes"]:
                wrong.append(
                    f"{row['image_id']}: {row['output_uri']} is {size}, not {row['output_bytes']} bytes"
                )
        if wrong:
            self.failures.append(f"{len(wrong)} done image(s) missing or partial in S3: {wrong[:3]}")

    def _check_tries(self) -> None:
        rows = [row for row in self.stack.task_instances(DAG_ID, self.run_id) if row["task_id"] == "batch"]
        worst = max(rows, key=lambda row: row["try_number"], default=None)
        self.facts["batches"] = len(rows)
        if worst is None:
            self.failures.append("no batch task instance")
            return
        last_try = worst["max_tries"] + 1
        self.facts["max_try"] = f"{worst['try_number']}/{last_try}"
        spent = [f"batch[{row['map_index']}] try {row['try_number']}" for row in rows
                 if row["try_number"] >= row["max_tries"] + 1]  # fmt: skip
        if spent:
            self.failures.append(f"batch(es) on their last retry: {spent}")

    def summary(self) -> str:
        facts = self.facts
        faults = "; ".join(fault.summary() for fault in self.faults.values())
        return (
            f"fault run {self.number}: {self.state} in {self.wall_s:.0f} s; {facts.get('statuses')}; "
            f"{facts.get('credits')} credits; {facts.get('batches')} batches, max try "
            f"{facts.get('max_try')}; {facts.get('deferrals')} deferred tries; races "
            f"{len(facts.get('races', []))}; kills: {faults}"
        )

    def evidence(self) -> str:
        """Log excerpts for a failed run: task states, the failed tries' logs, the scheduler's race lines."""
        lines = [line for line in _read(self.stack.logs_dir / "scheduler.log").splitlines()
                 if self.run_id in line and RACE_MESSAGE in line]  # fmt: skip
        race_logs = []
        for (map_index, try_number), what in self._races.items():
            with contextlib.suppress(Exception):
                log = self.stack.task_log(DAG_ID, self.run_id, "batch", try_number, map_index)
                race_logs.append(f"----- {what}: the end of its log -----\n{log[-2500:]}")
        return "\n".join(
            [
                "----- task instances -----",
                self.stack.run_report(DAG_ID, self.run_id),
                "----- scheduler: the race's lines -----",
                *lines[-10:],
                *race_logs,
                self.stack.log_tails(["triggerer"], chars=1500),
                f"----- leapi-server -----\n{self.server.logs()[-1500:]}",
            ]
        )


def race_events(
    stack: AirflowStack, run_id: str, *, killed: set[tuple[int, int]]
) -> dict[tuple[int, int], str]:
    """Resumed tries of the run lost to Airflow 3.3's deferral race, (map index, try) -> what was seen:

    * the scheduler's ``state mismatch`` event-log rows saying that the executor reported a try ``success``
      (a deferring exit) while the task instance was already running or queued again;
    * earlier tries whose log has a 404 ``Task Instance not found`` (the resumed try, failed under it).

    :param killed: (map index, try) of the tries the harness SIGKILLed: a killed task process is reported
        the same way (its supervisor exits normally before the API has recorded the failure).
    """
    found: dict[tuple[int, int], str] = {}
    for row in stack.event_log(DAG_ID, run_id):
        key = (row.get("map_index", -1), row.get("try_number") or 0)
        if (
            row["event"] == "state mismatch"
            and RACE_MESSAGE in (row.get("extra") or "")
            and key not in killed
        ):
            found[key] = f"{row['task_id']}[{key[0]}] try {key[1]}: state mismatch at {row['when']}"
    for ti in stack.task_instances(DAG_ID, run_id):
        for try_number in range(1, ti["try_number"]):
            key = (ti["map_index"], try_number)
            if key in found or key in killed:
                continue
            with contextlib.suppress(Exception):
                log = stack.task_log(DAG_ID, run_id, ti["task_id"], try_number, ti["map_index"])
                if LOST_TRY_MESSAGE in log:
                    found[key] = f"{ti['task_id']}[{key[0]}] try {key[1]}: 404 {LOST_TRY_MESSAGE}"
    return dict(sorted(found.items()))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
