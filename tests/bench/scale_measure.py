"""What the scale bench reads off a run: leapi-server's access log, Airflow's event log and metadata DB, the
task processes' memory, and the objects in the bucket.

Nothing here depends on how the catalog is built: the access log is the server's (uvicorn's, one line per
request, with the time to the millisecond), the event log and the metadata tables are Airflow's, task
processes are found by their ancestry from the scheduler (not by their environment), and results are
counted in the bucket.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

#: ``2026-12-01 12:00:00,123 INFO uvicorn.access: 127.0.0.1:4711 - "GET /v1/pipeline/5 HTTP/1.1" 200``
_ACCESS_LINE = re.compile(
    r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ uvicorn\.access: \S+ - "(\S+) (\S+) HTTP/[\d.]+" (\d{3})'
)
#: Kinds of request in the order the report lists them; downloads of result files are not API requests
#: (issue #19 counts them apart: "1.93 API requests per image, plus 20,000 result downloads").
POST_PIPELINE = "POST /v1/pipeline"
GET_PIPELINE = "GET /v1/pipeline/{id}"
GET_USAGE = "GET /v1/me/usage/"
GET_TMP = "GET /v1/tmp/..."
OTHER = "other"
API_KINDS = (POST_PIPELINE, GET_PIPELINE, GET_USAGE, OTHER)
_TMP_PIPELINE = re.compile(r"^/v1/tmp/p/(\d+)/")
#: A rate-limit wait the catalog logged in a task log (``waited 12.5s on the LEAPI rate limit``).
RATE_LIMIT_WAIT_LOG = re.compile(r"waited (\d+(?:\.\d+)?) ?s on the LEAPI rate limit")


@dataclass(frozen=True)
class Access:
    """One request leapi-server answered."""

    at: float  # Unix seconds
    method: str
    path: str
    status: int

    @property
    def kind(self) -> str:
        if self.method == "POST" and self.path.rstrip("/") == "/v1/pipeline":
            return POST_PIPELINE
        if self.method == "GET" and self.path.startswith("/v1/pipeline/"):
            return GET_PIPELINE
        if self.method == "GET" and self.path.startswith("/v1/me/usage"):
            return GET_USAGE
        if self.method == "GET" and self.path.startswith("/v1/tmp/"):
            return GET_TMP
        return OTHER

    @property
    def tmp_pipeline_id(self) -> int | None:
        """The pipeline a result download belongs to (``/v1/tmp/p/<id>/...``)."""
        match = _TMP_PIPELINE.match(self.path) if self.method == "GET" else None
        return int(match.group(1)) if match else None


def read_access_log(path: Path, offset: int = 0) -> tuple[list[Access], int]:
    """The requests logged in ``path`` from byte ``offset`` on (health checks left out), and the new offset."""
    accesses = []
    with open(path, "rb") as handle:
        handle.seek(offset)
        for raw in handle:
            match = _ACCESS_LINE.match(raw.decode(errors="replace"))
            if not match or match.group(3).startswith("/health"):
                continue
            # (the server logs local time: the machine's zone)
            when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").astimezone()
            accesses.append(Access(when.timestamp(), match.group(2), match.group(3), int(match.group(4))))
        return accesses, handle.tell()


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def counts_by_kind(accesses: Iterable[Access]) -> dict[str, int]:
    counts = Counter(a.kind for a in accesses)
    return {kind: counts.get(kind, 0) for kind in (*API_KINDS, GET_TMP)}


def max_per_window(times: Sequence[float], window_s: float = 60.0) -> tuple[int, float | None]:
    """The most events in any window of ``window_s`` seconds (sliding), and when that window starts."""
    ordered = sorted(times)
    best, best_start = 0, None
    for index, start in enumerate(ordered):
        count = bisect.bisect_left(ordered, start + window_s, lo=index) - index
        if count > best:
            best, best_start = count, start
    return best, best_start


# -- Airflow's records ---------------------------------------------------------------------------------


@dataclass
class TaskTimes:
    """What Airflow's event log says about a run's tasks."""

    starts: int = 0  # a worker started or resumed a try ("running" rows)
    deferrals: int = 0  # a try handed its wait to the triggerer (each defers with one new trigger)
    slot_s: float = 0.0  # sum of running spans: worker-slot time
    #: per task instance (``plan``, ``batch[3]``, ...): first start, end, running seconds, deferrals, tries
    #: and the start of the last try (``try_start``).
    spans: dict[str, dict[str, Any]] = field(default_factory=dict)


def task_times(events: Iterable[dict[str, Any]]) -> TaskTimes:
    """Starts, deferrals and running spans from the run's event-log rows (in the order written)."""
    times = TaskTimes()
    running_since: dict[str, datetime] = {}
    for row in events:
        if not row.get("task_id") or row["event"] not in (
            "running",
            "deferred",
            "success",
            "failed",
            "up_for_retry",
            "up_for_reschedule",
        ):
            continue
        index = row.get("map_index")
        name = row["task_id"] + (f"[{index}]" if index is not None and index >= 0 else "")
        when = datetime.fromisoformat(row["when"])
        span = times.spans.setdefault(
            name, {"start": when, "end": None, "running_s": 0.0, "deferrals": 0, "state": None, "tries": 0}
        )
        if row["event"] == "running":
            times.starts += 1
            running_since[name] = when
            if row.get("try_number") != span.get("try"):
                span["try"], span["try_start"] = row.get("try_number"), when
                span["tries"] += 1
            continue
        if name in running_since:
            seconds = (when - running_since.pop(name)).total_seconds()
            times.slot_s += seconds
            span["running_s"] += seconds
        if row["event"] == "deferred":
            times.deferrals += 1
            span["deferrals"] += 1
        else:
            span["end"], span["state"] = when, row["event"]
    return times


#: Airflow metadata tables counted per run (``log`` is the event log).
METADATA_TABLES = ("task_instance", "xcom", "trigger", "log", "task_instance_history")


def metadata_rows(db_path: Path, *, dag_id: str, run_id: str) -> dict[str, int]:
    """Rows of the run in Airflow's metadata tables (``trigger`` has no run: the rows left in the table;
    triggers are deleted once their task resumed, so the triggers a run made are its deferrals)."""
    found: dict[str, int] = {}
    uri = f"file:{db_path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        for table in METADATA_TABLES:
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if not columns:
                continue
            if {"dag_id", "run_id"} <= columns:
                query = f"SELECT count(*) FROM {table} WHERE dag_id = ? AND run_id = ?"
                found[table] = db.execute(query, (dag_id, run_id)).fetchone()[0]
            else:
                found[table] = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    found["airflow.db bytes"] = sum(
        p.stat().st_size for p in db_path.parent.glob(db_path.name + "*") if p.is_file()
    )
    return found


def rate_limit_waits(task_log_dir: Path) -> tuple[int, float]:
    """How many rate-limit waits the run's task logs report, and their seconds in all."""
    count, seconds = 0, 0.0
    for path in task_log_dir.rglob("*.log"):
        with contextlib.suppress(OSError):
            for match in RATE_LIMIT_WAIT_LOG.finditer(path.read_text(errors="replace")):
                value = float(match.group(1))
                count += value > 0
                seconds += value
    return count, seconds


# -- memory and CPU of processes -----------------------------------------------------------------------


@dataclass
class ProcessPeaks:
    """Peak PSS per process, sampled while a run goes on."""

    #: pid -> (peak PSS bytes, process title) of each task process (a grandchild of the scheduler or
    #: deeper: scheduler -> executor worker -> task process).
    tasks: dict[int, tuple[int, str]] = field(default_factory=dict)
    #: pid -> (peak PSS bytes, title) of the triggerer's processes.
    triggerer: dict[int, tuple[int, str]] = field(default_factory=dict)
    #: peak of the PSS summed over every Airflow process.
    airflow_total: int = 0
    max_load: float = 0.0
    samples: int = 0


def _children_map() -> dict[int, list[int]]:
    """Every live process's children, from one pass over the process table (``Process.children`` scans the
    whole table once per parent: with 40 Airflow processes, a sample every second would cost a core)."""
    children: dict[int, list[int]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(process.info["ppid"], []).append(process.pid)
    return children


def _descendants_by_depth(root: int, children: dict[int, list[int]]) -> list[tuple[int, int]]:
    """``(pid, depth)`` of every descendant of ``root`` (its children at depth 1)."""
    found = []
    level, depth = [root], 0
    while level:
        depth += 1
        level = [child for pid in level for child in children.get(pid, [])]
        found += [(pid, depth) for pid in level]
    return found


def _pss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_full_info().pss)
    except psutil.Error:
        return 0


def _title(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:100]
    except psutil.Error:
        return "?"


def _keep_peak(peaks: dict[int, tuple[int, str]], pid: int) -> None:
    size = _pss(pid)
    if size and size > peaks.get(pid, (0, ""))[0]:
        peaks[pid] = (size, _title(pid))


@contextlib.contextmanager
def sample_processes(
    scheduler_pid: int, triggerer_pid: int, airflow_pids: Sequence[int], *, every_s: float = 2.0
) -> Iterator[ProcessPeaks]:
    """Sample the PSS of every task process and triggerer process each ``every_s``, and of all Airflow
    processes together every 15th sample. Reading one process's PSS costs about 7 ms of CPU (its page map
    summary), so this costs about 3 % of one core: sampling task processes every second and everything every
    10 s cost 25 % (measured), which the DAG's run would pay."""
    peaks = ProcessPeaks()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            children = _children_map()
            for pid, depth in _descendants_by_depth(scheduler_pid, children):
                if depth >= 2:
                    _keep_peak(peaks.tasks, pid)
            for pid, _ in _descendants_by_depth(triggerer_pid, children):
                _keep_peak(peaks.triggerer, pid)
            if peaks.samples % 15 == 0:
                family = [(pid, 0) for pid in airflow_pids]
                family += [found for pid in airflow_pids for found in _descendants_by_depth(pid, children)]
                peaks.airflow_total = max(peaks.airflow_total, sum(_pss(pid) for pid, _ in family))
            peaks.max_load = max(peaks.max_load, os.getloadavg()[0])
            peaks.samples += 1

    thread = threading.Thread(target=sample, name="pss-sampler", daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) used so far by each process, its live descendants and the children
    they reaped."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = process.cpu_times()
                    total += t.user + t.system + t.children_user + t.children_system
    return total


# -- the bucket ----------------------------------------------------------------------------------------


def list_objects(s3: Any, bucket: str, prefix: str) -> tuple[int, int, float | None]:
    """Objects under ``prefix``: their count, bytes, and the latest ``LastModified`` (Unix seconds; S3
    gives whole seconds)."""
    count = size = 0
    latest: datetime | None = None
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            count += 1
            size += item["Size"]
            latest = item["LastModified"] if latest is None else max(latest, item["LastModified"])
    return count, size, latest.astimezone(UTC).timestamp() if latest else None


def wait_for_run_end(stack: Any, dag_id: str, run_id: str, *, timeout: float, every_s: float) -> str:
    """Wait until the run is ``success`` or ``failed`` reading only its state every ``every_s`` (a long run
    polled every second would cost the api-server, and so the 2 cores, more than the measurement needs:
    its duration comes from Airflow's own timestamps).

    :raises TimeoutError: not finished in time (with the task states).
    """
    deadline = time.monotonic() + timeout
    while True:
        stack.check_alive()
        state = str(stack.run_state(dag_id, run_id))
        if state in ("success", "failed"):
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"run {run_id} still {state} after {timeout:.0f} s:\n{stack.run_report(dag_id, run_id)}"
            )
        time.sleep(every_s)
