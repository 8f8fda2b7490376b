"""The REST side of :class:`devkit.airflow_stack.AirflowStack`: Airflow's public API (``/api/v2``) for DAGs,
runs, pools, task instances, their logs and the event log.

**Deferral, from Airflow's records.** :meth:`AirflowRestApi.deferred_task_instances` reads the **event
log** (``GET /api/v2/eventLogs``): Airflow 3.3's execution API writes one row per task-instance state
change it makes, ``deferred`` when a task hands its wait to the triggerer and ``running`` when a worker
starts (or resumes) it, each with the task id, map index, try number and time. A ``deferred`` row followed
by a ``running`` row of the same try proves that the task was deferred *and resumed*; the gap between them
is how long it was deferred. Alternatives considered: task-instance history has rows only for retries and
clears (a deferral keeps its try number); ``next_method``/``trigger_id`` are cleared when the task
finishes; the trigger table only shows triggers while they run; task log lines are text whose wording may
change between versions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

ADMIN_USER = "admin"
_TERMINAL_RUN_STATES = frozenset({"success", "failed"})
_TROUBLED_TASK_STATES = frozenset({"failed", "up_for_retry", "upstream_failed"})


class AirflowStackError(RuntimeError):
    """A component failed to start, died, or a run did not finish; the message carries log tails."""


class AirflowRestApi:
    """Methods on the api-server at ``api_url``, for a class that also provides ``admin_password``,
    :meth:`check_alive`, :meth:`log_tails` and :meth:`_worker_names` (:class:`~devkit.airflow_stack.AirflowStack`).
    """

    api_url: str
    _client: httpx.Client | None = None

    @property
    def admin_password(self) -> str:
        raise NotImplementedError

    def check_alive(self) -> None:
        raise NotImplementedError

    def log_tails(self, names: Sequence[str] | None = None, *, chars: int = 3000) -> str:
        raise NotImplementedError

    def _worker_names(self) -> list[str]:
        """Log names of the components that run tasks besides the scheduler (Celery workers)."""
        return []

    def api(self) -> httpx.Client:
        """An authenticated client on ``<api_url>/api/v2`` (a JWT from ``/auth/token``), re-used."""
        if self._client is None:
            response = httpx.post(
                f"{self.api_url}/auth/token",
                json={"username": ADMIN_USER, "password": self.admin_password},
                timeout=30,
            )
            _raise_for(response, "log in to the api-server")
            token = response.json()["access_token"]
            self._client = httpx.Client(
                base_url=f"{self.api_url}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=60
            )
        return self._client

    def set_pool(self, name: str, slots: int, include_deferred: bool = False) -> None:
        body = {"name": name, "slots": slots, "include_deferred": include_deferred}
        response = self.api().patch(f"/pools/{name}", json=body)
        if response.status_code == 404:
            response = self.api().post("/pools", json=body)
        _raise_for(response, f"set pool {name}")

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Wait until the dag-processor has serialized ``dag_id`` (its details answer)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            response = self.api().get(f"/dags/{dag_id}/details")
            if response.status_code == 200:
                return
            if time.monotonic() > deadline:
                errors = self.api().get("/importErrors").json().get("import_errors", [])
                raise AirflowStackError(
                    f"DAG {dag_id} not parsed after {timeout:.0f} s (import errors: {errors}):\n"
                    + self.log_tails(["dag-processor"])
                )
            time.sleep(0.5)

    def unpause(self, dag_id: str) -> None:
        _raise_for(self.api().patch(f"/dags/{dag_id}", json={"is_paused": False}), f"unpause {dag_id}")

    def trigger(self, dag_id: str, conf: dict[str, Any], logical_date: datetime | None = None) -> str:
        """Create a DAG run through the REST API; returns its run id.

        :param logical_date: default now (as the UI's trigger form does).
        """
        when = (logical_date or datetime.now(UTC)).isoformat()
        response = self.api().post(f"/dags/{dag_id}/dagRuns", json={"logical_date": when, "conf": conf})
        _raise_for(response, f"trigger {dag_id}")
        return response.json()["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        response = self.api().get(f"/dags/{dag_id}/dagRuns/{run_id}")
        _raise_for(response, f"read run {run_id}")
        return response.json()["state"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float, *, fail_on_retry: bool = False) -> str:
        """Wait until the run is ``success`` or ``failed``; returns that state.

        :param fail_on_retry: raise as soon as a task fails or waits for a retry (a check that expects no
            failure need not sit through the DAG's retry delays).
        :raises AirflowStackError: not finished in time, or a retry with ``fail_on_retry`` (task states and
            the logs of the troubled tasks in the message), or a component died.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            state = self.run_state(dag_id, run_id)
            if state in _TERMINAL_RUN_STATES:
                return state
            troubled = _TROUBLED_TASK_STATES & {ti["state"] for ti in self.task_instances(dag_id, run_id)}
            if time.monotonic() > deadline or (fail_on_retry and troubled):
                why = f"a task is {', '.join(sorted(troubled))}" if troubled else f"{timeout:.0f} s passed"
                raise AirflowStackError(
                    f"run {run_id} of {dag_id} is {state} and {why}:\n{self.run_report(dag_id, run_id)}\n"
                    + self.log_tails(["scheduler", "triggerer", *self._worker_names()])
                )
            time.sleep(1)

    def run_report(self, dag_id: str, run_id: str) -> str:
        """Each task instance's state and try, and the log tail of every failed or retrying one."""
        parts = []
        for ti in self.task_instances(dag_id, run_id):
            parts.append(f"  {ti['task_id']}[{ti['map_index']}] {ti['state']} (try {ti['try_number']})")
            if ti["state"] in _TROUBLED_TASK_STATES and ti["try_number"]:
                try:
                    log = self.task_log(dag_id, run_id, ti["task_id"], ti["try_number"], ti["map_index"])
                except AirflowStackError as exc:
                    log = str(exc)
                parts.append(f"  ----- its log (REST) -----\n{log[-4000:]}")
        return "\n".join(parts)

    def clear_run(self, dag_id: str, run_id: str) -> None:
        """Clear every task of a finished run (REST), so that the scheduler runs it again."""
        response = self.api().post(
            f"/dags/{dag_id}/dagRuns/{run_id}/clear", json={"dry_run": False, "only_failed": False}
        )
        _raise_for(response, f"clear run {run_id}")
        # The clear re-queues the run in the same transaction; make sure a waiter does not see the old end.
        deadline = time.monotonic() + 30
        while self.run_state(dag_id, run_id) in _TERMINAL_RUN_STATES:
            if time.monotonic() > deadline:
                raise AirflowStackError(f"run {run_id} still finished 30 s after it was cleared")
            time.sleep(0.5)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (mapped ones with their ``map_index``), as the REST API has them."""
        return self._paged(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", "task_instances", {})

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """The task try's log as text (one line per structured entry), through the REST logs endpoint."""
        response = self.api().get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"map_index": map_index, "full_content": True},
            headers={"Accept": "application/json"},
        )
        _raise_for(response, f"read the log of {task_id}[{map_index}]")
        entries = response.json().get("content", [])
        return "\n".join(_log_line(entry) if isinstance(entry, dict) else str(entry) for entry in entries)

    def xcom_value(self, dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1) -> Any:
        """The task instance's XCom ``key`` (``None`` while it has none)."""
        response = self.api().get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"map_index": map_index, "deserialize": True},
        )
        if response.status_code == 404:
            return None
        _raise_for(response, f"read XCom {key!r} of {task_id}[{map_index}]")
        return response.json().get("value")

    def event_log(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's event-log rows in the order they were written."""
        params = {"dag_id": dag_id, "run_id": run_id, "order_by": "event_log_id"}
        return self._paged("/eventLogs", "event_logs", params)

    def deferred_task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Task-instance tries of the run that deferred to the triggerer, from the event log (see the module
        docstring): one dict per deferred try with ``task_id``, ``map_index``, ``try_number``,
        ``deferrals`` (times it deferred), ``resumed`` (a worker started it again after each deferral)
        and ``deferred_s`` (seconds spent deferred, all deferrals of the try).
        """
        found: dict[tuple[str, int, int], dict[str, Any]] = {}
        pending: dict[tuple[str, int, int], datetime] = {}
        for row in self.event_log(dag_id, run_id):
            if not row.get("task_id") or row["event"] not in ("deferred", "running"):
                continue
            key = (row["task_id"], row.get("map_index", -1), row.get("try_number") or 0)
            when = datetime.fromisoformat(row["when"])
            if row["event"] == "deferred":
                entry = found.setdefault(
                    key,
                    {"task_id": key[0], "map_index": key[1], "try_number": key[2], "deferrals": 0,
                     "deferred_s": 0.0},
                )  # fmt: skip
                entry["deferrals"] += 1
                pending[key] = when
            elif key in pending:
                found[key]["deferred_s"] += (when - pending.pop(key)).total_seconds()
        for key, entry in found.items():
            entry["resumed"] = key not in pending
            entry["deferred_s"] = round(entry["deferred_s"], 3)
        return list(found.values())

    def _paged(self, path: str, field: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            response = self.api().get(path, params={**params, "limit": 100, "offset": len(rows)})
            _raise_for(response, f"list {path}")
            page = response.json()
            rows += page[field]
            if not page[field] or len(rows) >= page["total_entries"]:
                return rows


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.is_error:
        raise AirflowStackError(f"could not {what}: HTTP {response.status_code} {response.text[:500]}")


#: Keys every structured task-log entry repeats (the task instance's identity, the source location).
_LOG_CONTEXT_KEYS = frozenset(
    {"timestamp", "level", "event", "logger", "task_id", "try_number", "map_index", "dag_id", "run_id",
     "ti_id", "filename", "lineno", "loc", "error_detail", "sources"}
)  # fmt: skip


def _log_line(entry: dict[str, Any]) -> str:
    """One structured task-log entry as a line; an exception as its type, message and innermost frame."""
    text = f"{entry.get('timestamp', '')} {entry.get('level', '')} {entry.get('event', '')}"
    extra = {key: value for key, value in entry.items() if key not in _LOG_CONTEXT_KEYS}
    if extra:
        text += f" {extra}"
    for error in entry.get("error_detail") or []:
        frame = (error.get("frames") or [{}])[-1]
        text += (f"\n    {error.get('exc_type')}: {error.get('exc_value')}"
                 f" (at {frame.get('filename')}:{frame.get('lineno')})")  # fmt: skip
    return text
