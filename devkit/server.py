"""Run a real ``leapi-server`` on 127.0.0.1 for tests, demos and benches, and talk to it.

``running_server`` starts ``python -m leapi_server`` (or another ``leapi-server`` command) as a
subprocess on a free port, waits until it answers, and always stops it (and its worker processes) on
exit; ``use_backend`` chooses where the servers started meanwhile keep their state. ``in_process_server``
serves the same application from a thread of the calling process on a :class:`FakeClock`, for tests that
move time instead of waiting for it. ``wait_for_pipeline``, ``quick_start_body`` and ``used_credits_of``
are the requests and answers tests share. ``free_port``, ``wait_until_answering`` and ``stop_process``
serve every devkit server (Redis and moto's S3 too). None of them needs the internet; the source images
a server fetches are served by :mod:`devkit.sources`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from unittest import mock

import httpx

from leapi.constants import API_KEY_HEADER, HEALTH_PATH

_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (the usual bind-to-0 trick; a tiny race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until_answering(
    probe: Callable[[], object],
    *,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float,
    errors: tuple[type[Exception], ...] = (),
    interval: float = 0.05,
) -> bool:
    """Call ``probe`` every ``interval`` seconds until it returns a true value: a server just started
    answers.

    :param probe: one request to the server; an exception of ``errors`` counts as no answer yet.
    :param process: the server's process: its exit ends the wait at once.
    :param timeout: seconds to wait at the most.
    :returns: ``True`` once it answers; ``False`` when ``process`` exited or ``timeout`` passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        with contextlib.suppress(*errors):
            if probe():
                return True
        time.sleep(interval)
    return False


def stop_process(process: subprocess.Popen[bytes] | None, *, timeout: float = 10.0) -> None:
    """SIGTERM ``process`` if it still runs, and SIGKILL it if it has not exited ``timeout`` seconds later."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


@dataclass(frozen=True, kw_only=True)
class BackendSetup:
    """What one server on one data dir is told about its state: ``--database-url``, ``--temp-store`` and
    the environment they need (``AWS_*``). ``None``: the server's default (SQLite, file)."""

    database_url: str | None = None
    temp_store: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    def args(self) -> list[str]:
        args = ["--database-url", self.database_url] if self.database_url else []
        return args + (["--temp-store", self.temp_store] if self.temp_store else [])


@dataclass(frozen=True, kw_only=True)
class ServerBackend:
    """Where test servers keep their state: ``sqlite`` (SQLite + file, the default) or ``postgres``
    (PostgreSQL + S3, see ``tests/fixtures/postgres.py``).

    :param name: the test id part.
    :param setup: data dir -> its :class:`BackendSetup`. The same data dir gets the same database and
        bucket (a server restarted on its data dir finds its state); another one gets fresh ones.
    """

    name: str
    setup: Callable[[Path], BackendSetup] = lambda _data_dir: BackendSetup()


SQLITE_BACKEND = ServerBackend(name="sqlite")
_default_backend: list[ServerBackend] = [SQLITE_BACKEND]


@contextlib.contextmanager
def use_backend(backend: ServerBackend) -> Iterator[ServerBackend]:
    """Servers started meanwhile without an explicit ``backend`` use ``backend`` (the server suite runs
    once per backend through this)."""
    _default_backend.append(backend)
    try:
        yield backend
    finally:
        _default_backend.remove(backend)


def default_backend() -> ServerBackend:
    return _default_backend[-1]


class ServerStartError(RuntimeError):
    """``leapi-server`` exited or did not answer in time; the message carries its log tail."""


class RunningServer:
    """A ``leapi-server`` subprocess. Use through :func:`running_server`.

    :param data_dir: the server's ``--data-dir`` (kept across :meth:`restart`).
    :param api_keys: the keys it accepts; ``api_key`` is the first.
    :param command: the server command before its flags; default ``python -m leapi_server`` of this venv.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        api_keys: Sequence[str],
        extra_args: Sequence[str],
        env: Mapping[str, str] | None,
        allow_private_sources: bool,
        host: str = "127.0.0.1",
        command: Sequence[str] | None = None,
        compat: str = "default",
    ) -> None:
        self.data_dir = Path(data_dir)
        #: The server's ``--compat`` mode: ``default`` or ``docs`` (only what the LEAPI docs promise).
        self.compat = compat
        self._server_command = list(command) if command else [sys.executable, "-m", "leapi_server"]
        self.api_keys: tuple[str, ...] = tuple(api_keys)
        self.api_key: str = self.api_keys[0] if self.api_keys else ""
        self.host = host
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "server.log"
        self._extra_args = list(extra_args)
        self._env = dict(env or {})
        self._allow_private_sources = allow_private_sources
        self._log_file: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def headers(self, api_key: str | None = None) -> dict[str, str]:
        """Request headers carrying ``api_key`` (default: the first key)."""
        return {API_KEY_HEADER: api_key if api_key is not None else self.api_key}

    def client(self, api_key: str | None = None, **kwargs: object) -> httpx.Client:
        """A plain ``httpx.Client`` on this server sending ``api_key`` (default: the first key)."""
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.base_url, headers=self.headers(api_key), **kwargs)  # type: ignore[arg-type]

    @property
    def docs_only(self) -> bool:
        """Whether the server runs with ``--compat docs``."""
        return self.compat == "docs"

    def used_credits(self, api_key: str | None = None) -> int:
        """Credits used this month by ``api_key`` (default: the first key), from ``GET /v1/me/usage/`` in
        either mode's body shape."""
        with self.client(api_key) as client:
            return used_credits_of(client.get("/v1/me/usage/").json())

    def logs(self) -> str:
        """Everything the server wrote to stdout/stderr so far (across restarts; kept in the data dir, so
        read it before a temporary data dir is removed at exit)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle --------------------------------------------------------------------------------

    def _command(self) -> list[str]:
        cmd = [
            *self._server_command,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        for key in self.api_keys:
            cmd += ["--api-key", key]
        if self._allow_private_sources:
            cmd.append("--allow-private-sources")
        if self.compat != "default":
            cmd += ["--compat", self.compat]
        return cmd + self._extra_args

    def start(self, *, port: int | None = None) -> None:
        """Start the subprocess (on ``port``, or a fresh free port) and wait until it answers."""
        attempts = 1 if port else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            self.port = port or free_port(self.host)
            try:
                self._spawn_and_wait()
                return
            except ServerStartError as exc:  # most likely the port was taken between probe and bind
                last_error = exc
        assert last_error is not None
        raise last_error

    def _spawn_and_wait(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self._env}
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        log_offset = self.log_path.stat().st_size
        self.process = subprocess.Popen(
            self._command(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            # Own process group: kill() takes the worker processes down with the server, like a crash.
            start_new_session=True,
        )
        with httpx.Client(timeout=2.0) as client:
            if wait_until_answering(
                lambda: client.get(self.base_url + HEALTH_PATH).status_code == 200,
                process=self.process,
                timeout=_START_TIMEOUT_S,
                errors=(httpx.HTTPError,),
            ):
                return
        tail = self.logs()[log_offset:][-4000:]
        self.stop()
        raise ServerStartError(f"leapi-server did not start on {self.base_url}:\n{tail}")

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash: no shutdown code runs)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then SIGKILL of whatever is left of the process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(_STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._reap()

    def restart(self) -> None:
        """Stop if running (gracefully), then start again on the same port and data dir."""
        if self.process is not None and self.process.poll() is None:
            self.stop()
        self.start(port=self.port)

    def _reap(self) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(_STOP_TIMEOUT_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@contextlib.contextmanager
def running_server(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    api_keys: Sequence[str] = ("test-key",),
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    allow_private_sources: bool = True,
    command: Sequence[str] | None = None,
    compat: str = "default",
    backend: ServerBackend | None = None,
) -> Iterator[RunningServer]:
    """Start ``leapi-server`` on 127.0.0.1 (free port) and stop it on exit, whatever happens.

    :param data_dir: the server's data dir; a temporary one (removed afterwards) when ``None``.
    :param api_keys: keys the server accepts (``--api-key`` each).
    :param extra_args: more command-line flags, e.g. ``("--workers", "1")``.
    :param env: extra environment variables for the subprocess.
    :param allow_private_sources: pass ``--allow-private-sources`` (needed to fetch from 127.0.0.1).
    :param command: the server command before its flags, e.g. ``[venv/bin/leapi-server]``; default
        ``python -m leapi_server`` of this interpreter.
    :param compat: ``--compat``: ``default`` or ``docs`` (only what the LEAPI docs promise).
    :param backend: where the server keeps its state; default :func:`default_backend` (SQLite + file
        unless a test runs under :func:`use_backend`).
    """
    owned = data_dir is None
    path = Path(tempfile.mkdtemp(prefix="leapi-server-")) if owned else Path(data_dir)  # type: ignore[arg-type]
    setup = (backend or default_backend()).setup(path)
    server = RunningServer(
        data_dir=path,
        api_keys=api_keys,
        extra_args=[*setup.args(), *extra_args],
        env={**setup.env, **(env or {})},
        allow_private_sources=allow_private_sources,
        command=command,
        compat=compat,
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if owned:
            shutil.rmtree(path, ignore_errors=True)


def used_credits_of(usage: Mapping[str, Any]) -> int:
    """``used`` of a default usage body, or its twin in the ``--compat docs`` body."""
    if "used" in usage:
        return int(usage["used"])
    return int(usage["account"]["images_processed_this_month"])


class FakeClock:
    """A ``leapi_server.clock.Clock`` that moves only when told to.

    :param start: Unix seconds to start at; default the current second (whole seconds, so that moving by
        whole seconds lands exactly on window and expiry boundaries).
    """

    def __init__(self, *, start: float | None = None) -> None:
        self._now = float(int(time.time())) if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class InProcessServer:
    """A ``leapi-server`` application served by uvicorn on a thread of this process. Use through
    :func:`in_process_server`.

    :param runtime: the application's ``leapi_server.runtime.Runtime`` (its store, temp store, ...).
    :param clock: the clock the application reads.
    :param base_url: where it listens.
    :param data_dir: its data dir.
    :param api_keys: the keys it accepts; ``api_key`` is the first.
    """

    def __init__(
        self, *, runtime: Any, clock: FakeClock, base_url: str, data_dir: Path, api_keys: tuple[str, ...]
    ) -> None:
        self.runtime = runtime
        self.clock = clock
        self.base_url = base_url
        self.data_dir = data_dir
        self.api_keys = api_keys
        self.api_key = api_keys[0]

    def headers(self, api_key: str | None = None) -> dict[str, str]:
        """Request headers carrying ``api_key`` (default: the first key)."""
        return {API_KEY_HEADER: api_key if api_key is not None else self.api_key}

    def client(self, api_key: str | None = None, **kwargs: object) -> httpx.Client:
        """A plain ``httpx.Client`` on this server sending ``api_key`` (default: the first key)."""
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.base_url, headers=self.headers(api_key), **kwargs)  # type: ignore[arg-type]

    def advance(self, seconds: float) -> None:
        """Move the server's clock forward and have it re-check its timers (webhook retries, expired
        files) now rather than at its next poll."""
        self.clock.advance(seconds)
        self.runtime.wake()


@contextlib.contextmanager
def in_process_server(
    *,
    clock: FakeClock | None = None,
    api_keys: Sequence[str] = ("test-key",),
    **settings: Any,
) -> Iterator[InProcessServer]:
    """Serve ``leapi_server.app.create_app`` on 127.0.0.1 (free port) from a thread, on ``clock``.

    The same application as ``leapi-server`` (worker processes included) minus the command line, the
    data-dir lock and the startup check; stopped and its temporary data dir removed on exit.

    :param clock: the server's clock; default a new :class:`FakeClock`.
    :param api_keys: keys the server accepts.
    :param settings: ``ServerConfig`` fields; defaults here: one worker, private sources allowed.
    """
    import uvicorn

    from leapi_server.app import create_app
    from leapi_server.config import ServerConfig

    clock = clock or FakeClock()
    data_dir = Path(tempfile.mkdtemp(prefix="leapi-server-inproc-"))
    port = free_port()
    setup = default_backend().setup(data_dir)
    stored = {"database_url": setup.database_url} if setup.database_url else {}
    stored |= {"temp_store": setup.temp_store} if setup.temp_store else {}
    settings = {"workers": 1, "allow_private_sources": True, **stored, **settings}
    config = ServerConfig(data_dir=data_dir, api_keys=tuple(api_keys), port=port, **settings)
    # The dispatcher sets thread-count variables for its workers; keep them out of this process's
    # environment, where later subprocess servers would inherit them.
    with mock.patch.dict(os.environ, setup.env):
        app = create_app(config, clock=clock)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning")
        )
        thread = threading.Thread(target=server.run, name="leapi-server-inproc", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + _START_TIMEOUT_S
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise ServerStartError(f"in-process leapi-server did not start on port {port}")
                time.sleep(0.02)
            yield InProcessServer(
                runtime=app.state.runtime,
                clock=clock,
                base_url=f"http://127.0.0.1:{port}",
                data_dir=data_dir,
                api_keys=tuple(api_keys),
            )
        finally:
            server.should_exit = True
            thread.join(_STOP_TIMEOUT_S * 2)
            shutil.rmtree(data_dir, ignore_errors=True)


def wait_for_pipeline(
    client: httpx.Client, pipeline_id: int, *, timeout: float = 60.0, interval: float = 0.1
) -> dict[str, Any]:
    """Poll ``GET /v1/pipeline/{id}`` until DONE or ERROR; return the pipeline object.

    :raises TimeoutError: still PROCESSING after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/pipeline/{pipeline_id}")
        response.raise_for_status()
        pipeline = response.json()["pipeline"]
        if pipeline["status"] != "PROCESSING":
            return pipeline
        if time.monotonic() > deadline:
            raise TimeoutError(f"pipeline {pipeline_id} still PROCESSING after {timeout:g} s")
        time.sleep(interval)


#: The operation of the docs' quick start (900x600 burger.jpg to 1800x1200), verbatim.
QUICK_START_OPERATION: dict[str, Any] = {
    "op": "preset/marketplace",
    "width": 1800,
    "height": 1200,
    "restoration_level": 4,
    "lightai_intensity": 1.0,
    "toneai_intensity": 0.5,
    "image_format": "JPEG",
    "quality": 75,
}


def quick_start_body(url: str | list[str]) -> dict[str, Any]:
    """The docs' quick-start request body with its source URL(s) replaced by ``url``."""
    return {
        "source": {"http": {"url": url}},
        "operations": [dict(QUICK_START_OPERATION)],
        "sink": {"temp_store": True},
    }


@contextlib.contextmanager
def docs_only_rate_limited_server(*, per_minute: int, workers: int = 1) -> Iterator[RunningServer]:
    """A ``--compat docs`` server with a hard rate limit and no quota, the way the real API limits an
    account with no hints; the process's shared rate limiters start and end empty around it, so what
    one test's clients learned does not slow the next.

    :param per_minute: ``--rate-limit-per-minute``.
    :param workers: engine worker processes.
    """
    from leapi.ratelimit import SHARED_LIMITERS

    limits = ("--workers", str(workers), "--rate-limit-per-minute", str(per_minute), "--monthly-quota", "0")
    with running_server(compat="docs", extra_args=limits) as server:
        SHARED_LIMITERS.clear()
        try:
            yield server
        finally:
            SHARED_LIMITERS.clear()
