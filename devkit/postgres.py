"""A real PostgreSQL cluster on 127.0.0.1 for tests and benches: Debian's ``postgresql`` binaries
(``make postgres`` installs them on a fresh machine), a throwaway data directory, a free port.

``initdb`` and ``postgres`` refuse to run as root; when the tests run as root, the cluster runs as the
``postgres`` system user (``runuser``), in a directory that user owns. One cluster per test session; each
server start gets its own database (:meth:`PostgresCluster.create_database`), so tests stay isolated.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from devkit.server import free_port

#: Debian installs each major version's binaries here (not on PATH).
_DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
_SYSTEM_USER = "postgres"


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL binaries on this machine (run ``make postgres``)."""


def postgres_bin_dir() -> Path:
    """The newest Debian PostgreSQL ``bin`` folder, or the one holding ``initdb`` on PATH."""
    candidates = sorted(glob.glob(_DEBIAN_BINARIES), key=lambda p: int(Path(p).parent.name))
    if candidates:
        return Path(candidates[-1])
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailableError("PostgreSQL is not installed: run `make postgres` (Debian's postgresql)")


class PostgresCluster:
    """``initdb`` + ``pg_ctl`` on a free loopback port; trust authentication, reachable only locally.

    :param root: a fresh folder for the cluster (made owned by the ``postgres`` user when we are root).
    """

    def __init__(self, *, root: Path | None = None) -> None:
        self.bin_dir = postgres_bin_dir()
        self.root = Path(root or tempfile.mkdtemp(prefix="leapi-pg-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = 0
        self._as_root = os.geteuid() == 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", _SYSTEM_USER, "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        """Create the cluster on first start; then (re)start it on its port."""
        if self._as_root:
            shutil.chown(self.root, user=_SYSTEM_USER)
        if not self.data_dir.exists():
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
        self.port = self.port or free_port()
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c full_page_writes=off "
            "-c max_connections=300 -c shared_buffers=64MB"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the cluster (``fast``: clean; ``immediate``: like a crash)."""
        if self.data_dir.exists():
            subprocess.run(
                (["runuser", "-u", _SYSTEM_USER, "--"] if self._as_root else [])
                + [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"],
                capture_output=True,
                timeout=120,
                check=False,
            )

    def restart(self) -> None:
        """Stop and start again on the same port (every client connection is dropped)."""
        self.stop()
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` unless it exists; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        """Stop the cluster and delete its files."""
        self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)
