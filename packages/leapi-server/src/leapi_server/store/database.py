"""The connection discipline shared by the store's tables, one implementation per database backend.

The tables (``pipelines``, ``tasks``, ``webhooks``) write their SQL once, in the portable subset both
backends speak (qmark placeholders, ``ON CONFLICT``, ``RETURNING``, ``CASE``); what differs lives here:
how transactions are opened, how rows are locked, and whether this server is the database's only user.

Every table method is one short transaction. Methods are blocking: called from threads, never on the
event loop.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from leapi_server.store.schema import MIGRATIONS, SQLITE_SCHEMA


class DatabaseUnavailableError(RuntimeError):
    """The database cannot be reached (or refused the login) at start; the message says which."""


class Cursor(Protocol):
    """What a statement hands back (``sqlite3.Cursor`` and ``psycopg.Cursor`` both are one)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """A connection inside one of :class:`Database`'s contexts; rows read by column name."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursor: ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...


class Database(Protocol):
    """One backend's transactions. ``sqlite:///`` is :class:`SqliteDatabase`; ``postgresql://`` is
    ``leapi_server.store.postgres.PostgresDatabase``."""

    #: True when this server is the database's only user (SQLite in a locked data dir): at start every
    #: RUNNING lease is then stale. False when replicas share it: only expired leases are.
    exclusive: bool
    #: Appended to a SELECT to lock its rows for the transaction ("" where writes are serialized anyway).
    for_update: str
    #: Appended to the queue's claim: lock the rows taken, skip rows another replica has locked.
    skip_locked: str

    def write(self) -> AbstractContextManager[Connection]:
        """One write transaction, committed on exit, rolled back on any exception."""
        ...

    def snapshot(self) -> AbstractContextManager[Connection]:
        """Several reads that must see one consistent state (a pipeline and its tasks)."""
        ...

    def read(self) -> AbstractContextManager[Connection]:
        """A connection for one read statement."""
        ...

    def lock_owner(self, conn: Connection, owner: str) -> None:
        """Serialize this transaction with every other one of ``owner`` (quota and idempotency checks)."""
        ...

    def close(self) -> None:
        """Release this database's connections (the calling thread's, or the pool)."""
        ...


class SqliteDatabase:
    """One SQLite file in WAL mode. Thread-safe: one connection per thread, one writer at a time, each
    write a ``BEGIN IMMEDIATE`` transaction so that check-then-write sequences are atomic.

    :param path: the database file (created with its tables when missing).
    """

    exclusive = True
    for_update = ""
    skip_locked = ""

    def __init__(self, *, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SQLITE_SCHEMA)
            for table, column, sqlite_type, _pg_type in MIGRATIONS:
                # SQLite has no ADD COLUMN IF NOT EXISTS; the data-dir lock makes check-then-add safe.
                if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sqlite_type}")
        finally:
            conn.close()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN ourselves. check_same_thread stays on: thread-local.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        yield self.connection()

    def lock_owner(self, conn: Connection, owner: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` under the write lock already serializes every write."""

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
