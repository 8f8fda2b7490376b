"""The documented way to run ``airflow standalone`` in the background and stop it (docs/install.md) leaves
no process behind, a running task's included; and the leftover check it relies on can fail.

The shell blocks are read from the docs and run as they are, so the page cannot drift from what is
tested. Leftovers are found by ancestry and session id (:class:`devkit.processes.ProcessTracker`),
not by name or environment: Airflow renames its processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from devkit.processes import ProcessTracker
from devkit.server import free_port
from tests.support.docs import snippet

DOC = "docs/install.md"
#: (about a minute each on a quiet machine; several when two cores are shared with other work)
_READY_TIMEOUT_S = 480.0
_TASK_TIMEOUT_S = 300.0

#: Runs once as soon as the DAG is parsed; its task records its pid and sleeps, so the stop finds a task
#: process running (in a process group of its own, where Airflow's supervisor puts it).
_SLEEPY_DAG = """
import os, time
from datetime import datetime
from airflow.sdk import DAG, task

with DAG(dag_id="sleepy", schedule="@once", start_date=datetime(2026, 1, 1), catchup=False):
    @task(retries=3, retry_delay=1)
    def sleep_long():
        with open(os.path.join(os.environ["AIRFLOW_HOME"], "task.pid"), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(900)

    sleep_long()
"""


def _standalone_env(home: Path) -> dict[str, str]:
    """The test's own Airflow settings only (none inherited), everything on free loopback ports."""
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # this venv's airflow
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # (the stop must reach the executor's workers: a few are enough to show it, 32 cost 2 cores dearly)
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        # (the DAG file is written once everything answers: new files are found within seconds)
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    }
    return env


def _wait_for(predicate, *, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
            raise AssertionError(f"{what} not within {timeout:.0f} s; airflow-standalone.log ends:\n{tail}")
        time.sleep(1)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(_READY_TIMEOUT_S + _TASK_TIMEOUT_S + 180)
def test_documented_stop_leaves_no_process_of_airflow_standalone(tmp_path: Path) -> None:
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    env = _standalone_env(home)
    log, pid_file, task_pid_file = (
        home / "airflow-standalone.log",
        home / "airflow-standalone.pid",
        home / "task.pid",
    )

    subprocess.run(
        ["bash", "-c", snippet(DOC, "standalone-start")], cwd=home, env=env, check=True, timeout=30
    )
    session = int(pid_file.read_text())
    # (rooted at the standalone's session leader: pytest's other children, the suite's servers, are not its)
    tracker = ProcessTracker(root=session, sessions=[session])
    try:
        # The pid written becomes the leader of a session of its own once setsid has run (milliseconds).
        _wait_for(lambda: os.getsid(session) == session, timeout=10, what="setsid", log=log)
        # "ready" counts the scheduler, dag-processor and triggerer; a task also needs the api-server.
        health = f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}/api/v2/monitor/health"
        _wait_for(lambda: "Airflow is ready" in log.read_text(errors="replace") and _answers(health),
                  timeout=_READY_TIMEOUT_S, what="airflow standalone ready", log=log)  # fmt: skip
        (home / "dags" / "sleepy.py").write_text(_SLEEPY_DAG)
        _wait_for(task_pid_file.exists, timeout=_TASK_TIMEOUT_S, what="the task running", log=log)
        task = psutil.Process(int(task_pid_file.read_text()))
        tracker.watch()
        running = tracker.leftovers()
        # What `kill <pid>` and a process-group signal would miss: the task's own group, in the session.
        assert os.getsid(task.pid) == session and os.getpgid(task.pid) != session
        assert len(running) >= 6, [p.pid for p in running]  # standalone + 4 components + workers + task

        started = time.monotonic()
        subprocess.run(
            ["bash", "-c", snippet(DOC, "standalone-stop")], cwd=home, env=env, check=True, timeout=120
        )
        stop_s = time.monotonic() - started

        left = tracker.leftovers()
        assert left == [], f"left after the documented stop: {[p.pid for p in left]}"
        assert not task.is_running()
        print(f"{len(running)} processes (a task included) stopped in {stop_s:.1f} s")
    finally:
        tracker.kill_leftovers()


def test_tracker_finds_orphans_and_session_members() -> None:
    """The leftover check can fail: an orphan (its parent exited, so it left our process tree) in a
    process group of its own, and a process started in a tracked session after the last look, are both
    found, and gone once killed."""
    code = (
        "import subprocess, sys\n"
        "orphan = subprocess.Popen(['sleep', '300'], process_group=0)\n"
        "print(orphan.pid, flush=True)\n"
        "sys.stdin.readline()\n"  # wait until the test has looked once
        "late = subprocess.Popen(['sleep', '300'], start_new_session=False)\n"
        "print(late.pid, flush=True)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    # (rooted at the parent, not at pytest: the suite's own servers are pytest's children too)
    tracker = ProcessTracker(root=parent.pid, sessions=[parent.pid])
    try:
        assert parent.stdout is not None and parent.stdin is not None
        orphan = int(parent.stdout.readline())
        tracker.watch()
        parent.stdin.write("\n")
        parent.stdin.flush()
        late = int(parent.stdout.readline())
        parent.wait(10)  # both sleeps are orphans now, re-parented out of this process's tree

        found = {p.pid for p in tracker.leftovers()}

        assert found == {orphan, late}
    finally:
        assert tracker.kill_leftovers() == []
    assert tracker.leftovers() == []
