"""Processes a harness started, found by ancestry (not by environment), so that none outlives it unseen.

Airflow renames its task and supervisor processes with ``setproctitle``, which on Linux overwrites the
memory ``/proc/PID/environ`` reads: a renamed process's environment reads blank, so a search for a marker
variable (:func:`processes_with_env`) cannot see it. :class:`ProcessFamily` instead remembers

* every process descended from its roots, sampled with ``psutil`` while they live (a background thread,
  plus a sample on demand), each by PID *and* start time, so a reused PID is never mistaken for it; and
* every session those processes opened. The harness starts each component with ``start_new_session=True``,
  so a component and everything it forks share a session id (``setpgid``, which Airflow's task processes
  call, changes the group but not the session). A descendant orphaned between two samples and reparented
  to init is found by scanning for its session.

Only a process that both leaves its session (``setsid``) *and* is orphaned between two samples escapes;
the sample interval (default 0.5 s) bounds that window.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

__all__ = ["ProcessFamily", "describe", "kill_tree", "processes_with_env"]

#: Processes created this long before the family was made are not its own (clock granularity of
#: ``create_time`` is a jiffy; PIDs and session ids may be reused by unrelated processes later).
_START_SLACK_S = 1.0


@dataclass(frozen=True)
class _Seen:
    pid: int
    create_time: float
    title: str


class ProcessFamily:
    """Every process descended from the roots added with :meth:`add_root`, and the sessions they opened.

    :param sample_interval: seconds between background samples (:meth:`start_sampling`).
    """

    def __init__(self, *, sample_interval: float = 0.5) -> None:
        self.sample_interval = sample_interval
        self._created = time.time() - _START_SLACK_S
        self._own_session = os.getsid(0)
        self._roots: dict[int, float] = {}
        self._seen: dict[tuple[int, float], _Seen] = {}
        self._sessions: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def of_this_process(cls, *, sample_interval: float = 0.5) -> ProcessFamily:
        """The family of the calling process (which is its root, but never reported as its survivor)."""
        family = cls(sample_interval=sample_interval)
        family.add_root(os.getpid())
        return family

    def add_root(self, pid: int) -> None:
        """Remember ``pid`` and, from now on, everything descended from it (call right after starting it)."""
        with contextlib.suppress(psutil.Error):
            self._roots[pid] = psutil.Process(pid).create_time()
            self.sample()

    @property
    def sessions(self) -> frozenset[int]:
        """Session ids opened by the family (the caller's own session excluded)."""
        with self._lock:
            return frozenset(self._sessions)

    def sample(self) -> None:
        """Record the live descendants of every live root (and the roots), with their sessions."""
        for pid, create_time in list(self._roots.items()):
            try:
                root = psutil.Process(pid)
                if root.create_time() != create_time:
                    continue  # the root exited and its PID was reused
                members = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for member in members:
                self._remember(member)

    def _remember(self, process: psutil.Process) -> None:
        try:
            key = (process.pid, process.create_time())
            if key in self._seen:
                return
            seen = _Seen(pid=process.pid, create_time=key[1], title=_title(process))
            session = os.getsid(process.pid)
        except (psutil.Error, OSError):
            return
        with self._lock:
            self._seen[key] = seen
            if session not in (0, self._own_session):
                self._sessions.add(session)

    def start_sampling(self) -> None:
        """Sample every ``sample_interval`` seconds in a daemon thread until :meth:`stop_sampling`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="process-family", daemon=True)
        self._thread.start()

    def stop_sampling(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.sample_interval):
            self.sample()

    def survivors(self) -> list[psutil.Process]:
        """Live (not zombie) members: every process seen that still runs, and every process in one of the
        family's sessions created since the family was (orphans never sampled). The caller is excluded."""
        self.sample()
        found: dict[int, psutil.Process] = {}
        with self._lock:
            seen, sessions = list(self._seen.values()), set(self._sessions)
        for member in seen:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(member.pid)
                if process.create_time() == member.create_time:
                    found[member.pid] = process
        if sessions:
            for process in psutil.process_iter():
                with contextlib.suppress(psutil.Error, OSError):
                    if os.getsid(process.pid) in sessions and process.create_time() >= self._created:
                        found.setdefault(process.pid, process)
        found.pop(os.getpid(), None)
        return [process for process in found.values() if _running(process)]

    def wait_gone(self, timeout: float) -> list[psutil.Process]:
        """Wait up to ``timeout`` seconds for every member to exit; the ones still running."""
        deadline = time.monotonic() + timeout
        while (left := self.survivors()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def kill_survivors(self, timeout: float = 10.0) -> list[str]:
        """SIGKILL every member until none runs or ``timeout`` passes; descriptions of any still running."""
        deadline = time.monotonic() + timeout
        while left := self.survivors():
            if time.monotonic() > deadline:
                return [describe(process) for process in left]
            for process in left:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            time.sleep(0.2)
        return []


def kill_tree(pid: int) -> list[psutil.Process]:
    """SIGKILL ``pid``, every process descended from it and every member of its process group, at once (a
    crash or an OOM kill of a cgroup, not a shutdown); returns the processes signalled."""
    try:
        root = psutil.Process(pid)
        victims = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        group = os.getpgid(pid)
        if group != os.getpgid(0):  # never the caller's own group
            os.killpg(group, signal.SIGKILL)
    for process in victims:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return victims


def describe(process: psutil.Process) -> str:
    """``pid`` (parent ``ppid``, session ``sid``) and the process title as ``ps`` shows it."""
    try:
        return f"{process.pid} (ppid {process.ppid()}, sid {os.getsid(process.pid)}) {_title(process)}"
    except (psutil.Error, OSError):
        return str(process.pid)


def describe_all(processes: Iterable[psutil.Process]) -> list[str]:
    return [describe(process) for process in processes]


def _title(process: psutil.Process) -> str:
    try:
        # (a title set with setproctitle pads the old argv area with empty arguments)
        return (" ".join(filter(None, process.cmdline())) or f"[{process.name()}]")[:160]
    except psutil.Error:
        return "?"


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def processes_with_env(name: str, value: str) -> list[psutil.Process]:
    """Live (not zombie) processes whose environment has ``name=value``, this process excepted.

    Blind to processes renamed with ``setproctitle`` (their environment reads blank): use
    :class:`ProcessFamily` to find what a harness left. Kept for ``scripts/airflow_local.py``.
    """
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(name) == value:
                found.append(process)
    return found
