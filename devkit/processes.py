"""Which processes a run left behind, found by ancestry and session id.

Never by environment variable or name: Airflow renames its processes (setproctitle: ``airflow worker --
LocalExecutor``, ``airflow serve-logs``), which also overwrites the memory ``/proc/PID/environ`` reads, so
a marker variable can read blank. Ancestry alone is not enough either: a process whose parent died is
re-parented to init and drops out of the tree. So :class:`ProcessTracker` remembers every descendant it
has seen (by pid and start time, so a reused pid is not mistaken for it) and every session one of them
leads or belongs to, other than the tracker's own (which holds the user's shell): a task process that
moved to a process group of its own (Airflow's supervisor does) stays in its session.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable

import psutil


class ProcessTracker:
    """Processes started by ``root`` (default: this process), directly or not, and their sessions.

    Call :meth:`watch` while they run (each call adds what is alive now), then :meth:`leftovers` after
    stopping them.

    :param root: the process whose descendants are tracked.
    :param sessions: session ids to track as a whole from the start (e.g. a ``setsid`` command's pid).
    """

    def __init__(self, *, root: int | None = None, sessions: Iterable[int] = ()) -> None:
        self.root = root if root is not None else os.getpid()
        self._own_session = _session_of(self.root)
        self._seen: dict[int, float] = {}
        self.sessions: set[int] = set(sessions)

    def watch(self) -> None:
        """Remember every descendant of ``root`` alive now, and the sessions they are in."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.root).children(recursive=True):
                self._remember(child)
        for process in self._session_members():
            self._remember(process)

    def leftovers(self) -> list[psutil.Process]:
        """Live (not zombie) processes that were seen by :meth:`watch` or are in a tracked session."""
        found: dict[int, psutil.Process] = {}
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                    continue
                seen = self._seen.get(process.pid) == process.create_time()
                if seen or _session_of(process.pid) in self.sessions:
                    found[process.pid] = process
        return list(found.values())

    def kill_leftovers(self, *, timeout: float = 10.0) -> list[str]:
        """SIGKILL every leftover until none is left or ``timeout`` passes; describes those that stayed."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.leftovers()
            if not left or time.monotonic() > deadline:
                return [describe(process) for process in left]
            for process in left:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            time.sleep(0.2)

    def _remember(self, process: psutil.Process) -> None:
        with contextlib.suppress(psutil.Error):
            self._seen[process.pid] = process.create_time()
            session = _session_of(process.pid)
            if session not in (None, self._own_session):
                self.sessions.add(session)

    def _session_members(self) -> list[psutil.Process]:
        if not self.sessions:
            return []
        members = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if _session_of(process.pid) in self.sessions:
                    members.append(process)
        return members


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def describe(process: psutil.Process) -> str:
    """``PID command line`` (shortened), or the pid alone when the process is gone."""
    try:
        return f"{process.pid} {' '.join(process.cmdline())[:120]}"
    except psutil.Error:
        return str(process.pid)
