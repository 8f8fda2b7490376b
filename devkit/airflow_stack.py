"""A real Airflow on this machine: api-server, scheduler, dag-processor and triggerer (plus Redis and Celery
workers for the CeleryExecutor), each its own process on 127.0.0.1, every setting explicit.

``make e2e`` (:mod:`tests.e2e`), ``make airflow`` (``scripts/airflow_local.py``) and benchmarks use it::

    with AirflowStack(home=tmp, dags_folders=[REPO / "dags"], env={"AIRFLOW_CONN_...": ...}) as stack:
        stack.wait_for_dag("marketplace_feed_etl")
        stack.unpause("marketplace_feed_etl")
        run_id = stack.trigger("marketplace_feed_etl", conf={...})
        assert stack.wait_for_run("marketplace_feed_etl", run_id, timeout=300) == "success"

**Configuration.** Everything comes from environment variables set here; inherited ``AIRFLOW*`` variables
are dropped, and ``AIRFLOW_HOME`` is ``home``, so nothing depends on the user's ``~/airflow``. The metadata
DB is SQLite in ``home`` (Airflow itself puts it in WAL mode). Airflow 3 task workers (LocalExecutor
supervisors, Celery workers) talk to the api-server's execution API, not to the DB: they need
``[core] execution_api_server_url`` (``<api_url>/execution/``; the default ``http://localhost:8080`` would be
someone else's server) and the same ``[api_auth] jwt_secret`` as the scheduler that signs their tokens.
``[core] fernet_key``, ``[api] secret_key``, the JWT secret and the admin password are generated once per
``home`` (``home/stack-secrets.json``), so a stack restarted on the same home reads its own encrypted
connections. Auth is SimpleAuthManager with one ``admin`` user; :meth:`api` logs in through ``/auth/token``.

**Loopback only.** The api-server listens on ``127.0.0.1:<free port>``, Redis on another. Airflow's log
servers (scheduler, triggerer and Celery workers serve task logs on ``0.0.0.0:8793``/``8794``) are not
started (``--skip-serve-logs``): every component shares ``home/logs``, so the api-server reads task logs
from disk. The scheduler's health-check server stays off (its default bind is ``0.0.0.0``).

**Processes.** Each component runs in its own session (process group) with stdout/stderr in
``home/logs/<component>.log``. Task processes put themselves in process groups of their own (in the
component's session) and rename themselves with ``setproctitle``, which blanks what ``/proc/PID/environ``
reads, so :meth:`stop` finds them by ancestry: a :class:`~devkit.airflow_processes.ProcessFamily` samples every
component's descendants while they live and scans their sessions for orphans. :meth:`stop` sends SIGTERM
to each component's group, gives the whole family a grace period, and reports (and SIGKILLs) every process
that survived it. :meth:`kill` and :meth:`restart` crash and restart one component (fault runs).

**CeleryExecutor.** Airflow 3.3 and the Celery provider 3.26 accept SQLite: nothing refuses it, and the
workers never open the DB (they go through the execution API). Redis is the broker and the result backend (a
``redis-server`` on a free port, data in ``home/redis``, nothing persisted). Each Celery worker runs in
its own working directory ``home/workers/<name>``, so no task can find another's files in its cwd.

**Deferral, from Airflow's records.** :meth:`deferred_task_instances` reads the event log, where the
execution API records every ``deferred`` and ``running`` transition of a task instance (why that record,
and not task-instance history, trigger rows or log lines: :mod:`devkit.airflow_rest`).

The REST methods (:meth:`api`, :meth:`trigger`, :meth:`wait_for_run`, ...) live in
:class:`devkit.airflow_rest.AirflowRestApi`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
import psutil

from devkit.airflow_processes import ProcessFamily, describe_all, kill_tree, processes_with_env
from devkit.airflow_rest import ADMIN_USER, AirflowRestApi, AirflowStackError
from devkit.server import free_port, wait_until_answering

# (processes_with_env: still imported from here by scripts/airflow_local.py)
__all__ = ["AirflowStack", "AirflowStackError", "processes_with_env"]

_SIMPLE_AUTH = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
_BUNDLE_CLASS = "airflow.dag_processing.bundles.local.LocalDagBundle"
_START_TIMEOUT_S = 180.0
#: The api-server exits ~14 s after SIGTERM even when idle (3.3.2, uvicorn) and longer on a busy machine.
_STOP_GRACE_S = 60.0
_LOG_TAIL_CHARS = 3000


class AirflowStack(AirflowRestApi):
    """The Airflow components of one ``home``, started by :meth:`start` and stopped by :meth:`stop`.

    :param home: ``AIRFLOW_HOME``: metadata DB, logs, secrets and (Celery) Redis data and worker dirs.
    :param dags_folders: folders served as ``LocalDagBundle`` s (named after the folder).
    :param executor: ``LocalExecutor`` or ``CeleryExecutor``.
    :param env: more environment variables for every component (connections, DAG settings, overrides
        of the ``AIRFLOW__*`` settings made here).
    :param celery_workers: Celery workers to start (CeleryExecutor only).
    :param log_level: Airflow's ``[logging] logging_level``.
    :param expose_ui: a stack for a person: Swagger UI and the config page in the UI are switched on.
    :param celery_concurrency: task processes per Celery worker.
    :param local_settings: the source of an ``airflow_local_settings.py`` (cluster policies) that every
        component imports (written into ``home/config``, which Airflow puts on ``sys.path``).
    """

    def __init__(
        self,
        *,
        home: Path,
        dags_folders: Sequence[Path],
        executor: str = "LocalExecutor",
        env: Mapping[str, str] = {},  # never mutated (copied): the documented signature
        celery_workers: int = 2,
        log_level: str = "INFO",
        expose_ui: bool = False,
        celery_concurrency: int = 4,
        local_settings: str | None = None,
    ) -> None:
        if executor not in ("LocalExecutor", "CeleryExecutor"):
            raise ValueError(f"executor must be LocalExecutor or CeleryExecutor, not {executor!r}")
        self.home = Path(home).resolve()
        self.dags_folders = [Path(folder).resolve() for folder in dags_folders]
        self.executor = executor
        self.extra_env = dict(env)
        self.celery_workers = celery_workers if executor == "CeleryExecutor" else 0
        self.celery_concurrency = celery_concurrency
        self.log_level = log_level
        self.expose_ui = expose_ui
        self.logs_dir = self.home / "logs"
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.redis_port = free_port() if self.celery_workers else 0
        self.local_settings = local_settings
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._commands: dict[str, tuple[list[str], Path | None, bool]] = {}
        self._family = ProcessFamily()
        self._client: httpx.Client | None = None
        self._secrets: dict[str, str] = {}
        self._migrated = False

    # -- configuration ------------------------------------------------------------------------------

    @property
    def admin_password(self) -> str:
        """The password of the ``admin`` user (generated once per ``home``)."""
        return self._load_secrets()["admin_password"]

    def _load_secrets(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        if self._secrets:
            return self._secrets
        path = self.home / "stack-secrets.json"
        if path.exists():
            self._secrets = json.loads(path.read_text())
            return self._secrets
        self.home.mkdir(parents=True, exist_ok=True)
        values = {
            "fernet_key": Fernet.generate_key().decode(),
            "jwt_secret": secrets.token_urlsafe(64),
            "api_secret_key": secrets.token_urlsafe(64),
            "admin_password": secrets.token_urlsafe(12),
        }
        path.write_text(json.dumps(values))
        path.chmod(0o600)
        self._secrets = values
        return values

    def environment(self) -> dict[str, str]:
        """The environment of every component (also usable to run ``airflow`` CLI commands on this home)."""
        keys = self._load_secrets()
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        # Prefixed: Airflow reserves some names (a bundle called "example_dags" is refused).
        names = [f"leapi-{folder.name.replace('_', '-')}" for folder in self.dags_folders]
        bundles = [
            {
                "name": name if names.count(name) == 1 else f"{name}-{index}",
                "classpath": _BUNDLE_CLASS,
                "kwargs": {"path": str(folder)},
            }
            for index, (name, folder) in enumerate(zip(names, self.dags_folders, strict=True))
        ]
        settings = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
            "AIRFLOW__CORE__AUTH_MANAGER": _SIMPLE_AUTH,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folders[0] if self.dags_folders else self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
            "AIRFLOW__API__ENABLE_SWAGGER_UI": str(self.expose_ui),
            "AIRFLOW__API__EXPOSE_CONFIG": str(self.expose_ui),
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs_dir / "tasks"),
            "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(
                self.logs_dir / "dag-processor"
            ),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": self.log_level,
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            # New DAG files appear within seconds, changed ones are re-parsed every 15 s.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "15",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "PYTHONUNBUFFERED": "1",
        }
        if self.celery_workers:
            redis = f"redis://127.0.0.1:{self.redis_port}"
            settings |= {
                "AIRFLOW__CELERY__BROKER_URL": f"{redis}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"{redis}/1",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.celery_concurrency),
            }
        return {**inherited, **settings, **self.extra_env}

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop(raise_on_leftovers=exc is None)

    def start(self) -> None:
        """Migrate the DB (unless :meth:`migrate` did), start every component and wait until the api-server
        reports them healthy.

        :raises AirflowStackError: a component exited or was not healthy in time (everything started is
            stopped again first).
        """
        try:
            self.migrate()
            self._family.start_sampling()
            if self.celery_workers:
                self._start_redis()
            self._spawn("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(self.api_port)])
            self._spawn("scheduler", ["scheduler", "--skip-serve-logs"])
            self._spawn("dag-processor", ["dag-processor"])
            self._spawn("triggerer", ["triggerer", "--skip-serve-logs"])
            for index in range(1, self.celery_workers + 1):
                self._start_celery_worker(f"worker-{index}")
            self._wait_healthy()
        except BaseException:
            self.stop(raise_on_leftovers=False)
            raise

    def migrate(self) -> None:
        """Create or upgrade the metadata DB and write the admin's password file; once per instance.

        Call it before :meth:`start` to prepare the DB with :meth:`cli` (connections, pools) before any
        component runs.
        """
        if self._migrated:
            return
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        if self.local_settings is not None:
            (self.home / "config").mkdir(exist_ok=True)
            (self.home / "config" / "airflow_local_settings.py").write_text(self.local_settings)
        passwords = self.home / "passwords.json"
        if not passwords.exists():
            passwords.write_text(json.dumps({ADMIN_USER: self.admin_password}))
            passwords.chmod(0o600)
        try:
            self.cli(["db", "migrate"], timeout=300, log_name="db-migrate")
        except AirflowStackError as exc:
            raise AirflowStackError(f"airflow db migrate failed:\n{self.log_tail('db-migrate')}") from exc
        self._migrated = True

    def cli(self, args: Sequence[str], *, timeout: float = 120, log_name: str = "cli") -> None:
        """Run ``airflow <args>`` with the stack's environment; its output goes to ``logs/<log_name>.log``.

        :raises AirflowStackError: it failed (with the log tail).
        """
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / f"{log_name}.log", "ab") as out:
            done = subprocess.run(
                self._airflow(args),
                cwd=self.home,
                env=self.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            raise AirflowStackError(
                f"airflow {' '.join(args[:2])} exited {done.returncode}:\n{self.log_tail(log_name)}"
            )

    def _airflow(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def _spawn(
        self, name: str, args: Sequence[str], *, cwd: Path | None = None, airflow: bool = True
    ) -> subprocess.Popen[bytes]:
        cwd = cwd or self.home
        cwd.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / f"{name}.log", "ab") as out:
            process = subprocess.Popen(
                self._airflow(args) if airflow else list(args),
                cwd=cwd,
                env=self.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own group, so that SIGTERM reaches the component's helpers (uvicorn, executor
                # workers) as Ctrl-C in a terminal would.
                start_new_session=True,
            )
        self._processes[name] = process
        self._commands[name] = (list(args), cwd, airflow)
        self._family.add_root(process.pid)
        return process

    def kill(self, name: str) -> list[str]:
        """SIGKILL component ``name``, everything descended from it and its process group at once (a crash,
        or the OOM killer taking its cgroup); :meth:`restart` starts it again.

        :returns: descriptions of the processes killed.
        """
        process = self._processes.pop(name)
        victims = describe_all(kill_tree(process.pid))
        process.wait(30)
        return victims

    def restart(self, name: str) -> None:
        """Start component ``name`` again, as a supervisor would (same command, log appended)."""
        if name in self._processes and self._processes[name].poll() is None:
            raise AirflowStackError(f"{name} is running")
        args, cwd, airflow = self._commands[name]
        self._spawn(name, args, cwd=cwd, airflow=airflow)

    def task_runner_pids(self) -> list[int]:
        """The components whose descendants run tasks: the scheduler (LocalExecutor) or the Celery workers."""
        names = self._worker_names() or ["scheduler"]
        return [self._processes[name].pid for name in names]

    def _start_redis(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise AirflowStackError("redis-server is not on PATH (make installs it: `make redis`)")
        data = self.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        args = [executable, "--bind", "127.0.0.1", "--port", str(self.redis_port), "--dir", str(data)]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
        process = self._spawn("redis", args, cwd=data, airflow=False)
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=1)
        try:
            if wait_until_answering(
                client.ping, process=process, timeout=30, errors=(redis.RedisError,), interval=0.1
            ):
                return
        finally:
            client.close()
        raise AirflowStackError(f"redis-server did not start:\n{self.log_tail('redis')}")

    def _start_celery_worker(self, name: str) -> None:
        args = ["celery", "worker", "--skip-serve-logs", "--celery-hostname", f"{name}@%h"]
        args += ["--concurrency", str(self.celery_concurrency), "--without-gossip", "--without-mingle"]
        self._spawn(name, args, cwd=self.home / "workers" / name)

    def _wait_healthy(self, timeout: float = _START_TIMEOUT_S) -> None:
        wanted = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        deadline = time.monotonic() + timeout
        health: dict[str, Any] = {}
        workers = [f"worker-{index}" for index in range(1, self.celery_workers + 1)]
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    health = client.get(f"{self.api_url}/api/v2/monitor/health").json()
                healthy = all((health.get(part) or {}).get("status") == "healthy" for part in wanted)
                if healthy and all(self._celery_ready(worker) for worker in workers):
                    return
                time.sleep(0.5)
        raise AirflowStackError(
            f"Airflow was not healthy after {timeout:.0f} s (health: {health}):\n{self.log_tails()}"
        )

    def _celery_ready(self, name: str) -> bool:
        # Celery logs "<hostname> ready." once it consumes from the broker; there is no other local probe.
        return " ready." in self.log_tail(name, chars=200_000)

    def check_alive(self) -> None:
        """:raises AirflowStackError: a component has exited (with its log tail)."""
        for name, process in self._processes.items():
            if process.poll() is not None:
                raise AirflowStackError(
                    f"{name} exited with status {process.returncode}:\n{self.log_tail(name)}"
                )

    def stop(self, *, raise_on_leftovers: bool = True) -> list[str]:
        """Stop every process the stack started: SIGTERM to each component's group, a grace period for the
        whole family (found by ancestry, task processes included) to exit, then SIGKILL to the rest.

        :param raise_on_leftovers: raise if a process survived the graceful stop (it is killed all the same).
        :returns: descriptions of the processes that survived the graceful stop (empty when all exited).
        """
        if self._client is not None:
            self._client.close()
            self._client = None
        self._family.stop_sampling()
        self._family.sample()  # every component's descendants as they are now, before any exits
        # Scheduler first (no new work), Redis last (workers drain through it).
        order = sorted(self._processes, key=lambda n: (n == "redis", n == "api-server", n != "scheduler"))
        for name in order:
            _signal_group(self._processes[name], signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for name in order:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._processes[name].wait(max(0.1, deadline - time.monotonic()))
        survived = describe_all(self._family.wait_gone(max(0.1, deadline - time.monotonic())))
        unkillable = self._family.kill_survivors(timeout=10)
        for process in self._processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        self._processes.clear()
        leftovers = survived + [f"{left} (still running after SIGKILL)" for left in unkillable]
        if leftovers and raise_on_leftovers:
            raise AirflowStackError(f"processes that survived Airflow's graceful stop: {leftovers}")
        return leftovers

    def _worker_names(self) -> list[str]:
        return [name for name in self._processes if name.startswith("worker-")]

    def survivors(self) -> list[str]:
        """Descriptions of the live processes of the stack's family (components, tasks, their orphans)."""
        return describe_all(self._family.survivors())

    # -- logs and resources -------------------------------------------------------------------------

    def log_tail(self, name: str, *, chars: int = _LOG_TAIL_CHARS) -> str:
        path = self.logs_dir / f"{name}.log"
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - chars))
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return f"(no {path})"

    def log_tails(self, names: Sequence[str] | None = None, *, chars: int = _LOG_TAIL_CHARS) -> str:
        """The last ``chars`` of each component's log (all components by default), with headers."""
        chosen = names if names is not None else list(self._processes) or ["db-migrate"]
        return "\n".join(f"----- {self.logs_dir / name}.log -----\n{self.log_tail(name, chars=chars)}"
                         for name in chosen)  # fmt: skip

    def process_rss_bytes(self, *, proportional: bool = False) -> dict[str, int]:
        """Resident memory of each component now, its child processes (task processes included) counted.

        :param proportional: PSS instead of RSS: pages shared between processes are split among them, so
            the sum is what the component really holds. RSS counts a shared page once per process, which
            makes forked families look large (the LocalExecutor's 32 idle workers: ~4.5 GiB of RSS).
        """
        sizes = {}
        for name, process in self._processes.items():
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(process.pid)
                family = [parent, *parent.children(recursive=True)]
                sizes[name] = sum(_memory(member, proportional) for member in family)
        return sizes


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The group id is the component's pid (start_new_session), valid while any member lives.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _memory(process: psutil.Process, proportional: bool) -> int:
    try:
        return process.memory_full_info().pss if proportional else process.memory_info().rss
    except psutil.Error:  # gone meanwhile
        return 0
