"""The e2e leftover check (:class:`devkit.airflow_processes.ProcessFamily`) finds what the old one could not: an
orphaned grandchild renamed with ``setproctitle``, whose ``/proc/PID/environ`` reads blank."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devkit.airflow_processes import ProcessFamily, processes_with_env

MARKER = "LEAPI_HARNESS_TEST"
#: The component: on ``go`` starts the grandchild, waits until it is ready, and on ``release`` exits
#: (orphaning it).
ROOT = """
import os, subprocess, sys, time
go, ready, release, leave_session, grandchild = sys.argv[1:6]
def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.01)
wait_for(go)
subprocess.Popen([sys.executable, "-c", grandchild, ready, leave_session])
wait_for(ready)
wait_for(release)
"""
#: The grandchild: renames itself as Airflow's task processes do, says its PID, lives on.
GRANDCHILD = """
import os, sys, time
import setproctitle
if sys.argv[2] == "1":
    os.setsid()
setproctitle.setproctitle("airflow worker -- 00000000-0000-0000-0000-000000000000")
with open(sys.argv[1] + ".tmp", "w") as handle:
    handle.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
"""


class Orphaning:
    """A root process (its own session) that leaves a renamed grandchild behind when told to."""

    def __init__(self, folder: Path, *, leave_session: bool) -> None:
        self.go, self.ready, self.release = folder / "go", folder / "ready", folder / "release"
        self.marker = uuid.uuid4().hex
        files = [str(self.go), str(self.ready), str(self.release)]
        self.root = subprocess.Popen(
            [sys.executable, "-c", ROOT, *files, str(int(leave_session)), GRANDCHILD],
            env={**os.environ, MARKER: self.marker},
            start_new_session=True,
        )

    def start_grandchild(self) -> int:
        """Let the root start the grandchild; its PID once it has renamed itself."""
        self.go.touch()
        deadline = time.monotonic() + 30
        while not self.ready.exists():
            assert time.monotonic() < deadline, "the grandchild did not start"
            time.sleep(0.01)
        return int(self.ready.read_text())

    def orphan(self) -> None:
        """Let the root exit, leaving its child to be reparented."""
        self.release.touch()
        self.root.wait(30)


@pytest.fixture
def orphans(tmp_path: Path) -> Iterator[list[Orphaning]]:
    made: list[Orphaning] = []
    yield made
    for orphaning in made:  # whatever a failed test left
        orphaning.root.kill()
        with contextlib.suppress(FileNotFoundError, ValueError, psutil.Error):
            psutil.Process(int(orphaning.ready.read_text())).kill()


def _pids(processes: list[psutil.Process]) -> set[int]:
    return {process.pid for process in processes}


def test_finds_a_renamed_orphaned_grandchild_it_never_saw_by_its_session(tmp_path, orphans):
    family = ProcessFamily()
    orphans.append(orphaning := Orphaning(tmp_path, leave_session=False))
    family.add_root(orphaning.root.pid)  # sampled now: the grandchild does not exist yet
    grandchild = orphaning.start_grandchild()
    orphaning.orphan()

    survivors = family.survivors()

    assert grandchild in _pids(survivors)
    process = psutil.Process(grandchild)
    assert process.ppid() != orphaning.root.pid  # reparented (to init or a subreaper)
    assert process.cmdline()[0].startswith("airflow worker -- ")
    # What the previous check read: the renamed process's environment is blank, the marker invisible.
    assert grandchild not in _pids(processes_with_env(MARKER, orphaning.marker))
    assert family.kill_survivors() == []
    assert not family.survivors()
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


def test_finds_an_orphan_that_left_the_session_because_it_was_sampled_alive(tmp_path, orphans):
    family = ProcessFamily(sample_interval=0.05)
    orphans.append(orphaning := Orphaning(tmp_path, leave_session=True))
    family.add_root(orphaning.root.pid)
    family.start_sampling()
    grandchild = orphaning.start_grandchild()
    time.sleep(0.5)  # samples while the grandchild is still the root's child
    orphaning.orphan()
    family.stop_sampling()

    assert os.getsid(grandchild) == grandchild  # out of the root's session: only the sample knows it
    assert grandchild in _pids(family.survivors())
    assert family.kill_survivors() == []


def test_reports_nothing_once_all_exited_and_never_an_unrelated_process(tmp_path):
    family = ProcessFamily()
    unrelated = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        done = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
        family.add_root(done.pid)
        done.wait(30)
        assert family.survivors() == []
        assert family.kill_survivors() == []
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()
