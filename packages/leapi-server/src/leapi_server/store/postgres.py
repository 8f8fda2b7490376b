"""The PostgreSQL backend of the store (``--database-url postgresql://...``): psycopg 3 and its pool.

Several replicas share the database, so unlike SQLite nothing here may assume it is alone:

- the schema is created (or migrated) under a transaction-level advisory lock, so replicas starting at
  once do not race on ``CREATE TABLE``;
- the queue's claim locks the rows it takes with ``FOR UPDATE SKIP LOCKED``: replicas claiming at the
  same time take different tasks and never wait for each other;
- checks that read then write (quota, idempotency) hold a per-owner advisory lock;
- the pool checks a connection before lending it, so a database restart costs the calls in flight at
  that moment (they fail and are retried by their callers), not the replica.

The tables' SQL is written once with ``?`` placeholders (sqlite3's paramstyle); psycopg's is ``%s``, so
statements are translated here. The SQL has no other ``?`` and no ``%``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from leapi_server.store.database import DatabaseUnavailableError
from leapi_server.store.schema import MIGRATIONS, POSTGRES_SCHEMA

#: Key of the advisory lock held while the schema is created or migrated (any constant unique to us).
_SCHEMA_LOCK_KEY = 0x1EA91_5C4E
#: Seconds to wait for a pooled connection before the call fails (and the API answers 5xx).
_POOL_TIMEOUT_S = 30.0
_CONNECT_TIMEOUT_S = 10


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    return sql.replace("?", "%s")


class _Connection:
    """A pooled psycopg connection that takes the tables' qmark-style SQL."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self._conn.execute(_pg_sql(sql), params)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(_pg_sql(sql), params)


class PostgresDatabase:
    """A connection pool on one PostgreSQL database, shared with the other replicas.

    :param url: ``postgresql://user[:password]@host:port/dbname`` (libpq URI; its query parameters, such
        as ``sslmode``, pass through).
    :param pool_size: connections kept open at most; the API threads and the background loops share them.
    :raises DatabaseUnavailableError: the database cannot be reached within the pool's timeout.
    """

    exclusive = False
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE OF t SKIP LOCKED"

    def __init__(self, *, url: str, pool_size: int = 10) -> None:
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"row_factory": dict_row},
            check=ConnectionPool.check_connection,
            timeout=_POOL_TIMEOUT_S,
            open=False,
            name="leapi-store",
        )
        try:
            # One direct connection first: a database that is down or refuses us fails here at once with
            # libpq's own words, where the pool would keep retrying until its timeout.
            with psycopg.connect(url, connect_timeout=_CONNECT_TIMEOUT_S) as conn:
                _create_schema(conn)
            self._pool.open(wait=True, timeout=_POOL_TIMEOUT_S)
        except (psycopg.Error, TimeoutError) as exc:
            self._pool.close()
            raise DatabaseUnavailableError(
                f"cannot use the database at {_redacted(url)}: {str(exc).strip() or type(exc).__name__}"
            ) from exc

    @contextmanager
    def write(self) -> Iterator[_Connection]:
        # The pool's context is one transaction: committed on exit, rolled back on an exception.
        with self._pool.connection() as conn:
            yield _Connection(conn)

    @contextmanager
    def snapshot(self) -> Iterator[_Connection]:
        with self._pool.connection() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield _Connection(conn)

    @contextmanager
    def read(self) -> Iterator[_Connection]:
        with self._pool.connection() as conn:
            yield _Connection(conn)

    def lock_owner(self, conn: Any, owner: str) -> None:
        # Advisory locks take a 64-bit key: the owner's hash, computed here (PostgreSQL's hashtext is an
        # internal function). A collision only serializes two accounts' submits, it never mixes them.
        key = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:8], "big", signed=True)
        conn.execute("SELECT pg_advisory_xact_lock(?)", (key,))

    def close(self) -> None:
        self._pool.close()


def _create_schema(conn: psycopg.Connection[Any]) -> None:
    """Create or migrate the tables in one transaction, one replica at a time."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
    conn.execute(POSTGRES_SCHEMA)
    for table, column, _sqlite_type, pg_type in MIGRATIONS:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {pg_type}")


def _redacted(url: str) -> str:
    """``url`` without its password (error messages and logs)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host, port, dbname = info.get("host", "localhost"), info.get("port", "5432"), info.get("dbname", "")
    return f"postgresql://{info.get('user', '')}@{host}:{port}/{dbname}"
