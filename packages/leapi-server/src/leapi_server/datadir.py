"""What ``leapi-server`` keeps in ``--data-dir`` besides the database: its lock and its secrets."""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO


class DataDirInUseError(RuntimeError):
    """Another running ``leapi-server`` holds the data dir."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """One server per data dir: its RUNNING task leases are then known to be stale at start.

    :returns: the open lock file; the lock lasts until it is closed (or the process ends).
    :raises DataDirInUseError: another process holds the lock.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / ".lock", "a+")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirInUseError(f"{data_dir} is used by another running leapi-server") from None
    return handle


def load_or_create_secret(path: Path, *, generate: Callable[[], str] = lambda: secrets.token_hex(32)) -> str:
    """Read a secret kept in the data dir, creating it (mode 0600) on first start.

    :param path: the secret's file.
    :param generate: makes a new secret when the file does not exist yet.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value
