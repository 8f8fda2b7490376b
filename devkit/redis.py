"""A real ``redis-server`` on a free 127.0.0.1 port for tests (``make redis`` installs the binary).

Nothing is persisted (``--save ""``, no AOF): :meth:`RedisServer.restart` is an outage that loses every key,
:meth:`RedisServer.stop` an outage that lasts until :meth:`RedisServer.start`.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from devkit.server import free_port, stop_process, wait_until_answering

_START_TIMEOUT_S = 30.0


class RedisServer:
    """One ``redis-server`` subprocess; the port stays the same across :meth:`stop` / :meth:`start`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def connection_json(self) -> str:
        """An ``AIRFLOW_CONN_*`` JSON value for a ``redis`` connection to this server."""
        import json

        return json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": self.port, "extra": {"db": 0}})

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not on PATH (the Makefile installs it: `make redis`)")
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [executable, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder)]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            if wait_until_answering(
                client.ping, process=self.process, timeout=_START_TIMEOUT_S, errors=(redis.RedisError,)
            ):
                return
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"redis-server did not start: {(self.folder / 'redis.log').read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self):  # -> redis.Redis (sync), decoding to str
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)


@contextlib.contextmanager
def running_redis(folder: Path | None = None) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped (and its temporary folder removed) on exit."""
    owned = folder is None
    path = Path(tempfile.mkdtemp(prefix="leapi-redis-")) if owned else Path(folder)  # type: ignore[arg-type]
    server = RedisServer(path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if owned:
            shutil.rmtree(path, ignore_errors=True)
