"""Durable state of ``leapi-server``: one SQLite database (WAL) under ``--data-dir`` (the default), or one
PostgreSQL database shared by several replicas (``--database-url postgresql://...``).

One table group per module: ``pipelines`` (accepting: pipelines, ledger, idempotency keys), ``tasks``
(the work queue and output expiry), ``webhooks`` (deliveries and attempts); ``schema`` holds the
tables and their states, ``database`` the connection discipline (``postgres`` its PostgreSQL implementation), ``rows`` the records handed out.
"""

from __future__ import annotations

from pathlib import Path

from leapi_server.clock import SYSTEM_CLOCK, Clock
from leapi_server.store.database import Database, DatabaseUnavailableError, SqliteDatabase
from leapi_server.store.pipelines import PipelineTable
from leapi_server.store.rows import (
    ClaimedTask,
    Delivery,
    DeliveryAttempt,
    DeliveryRecord,
    PipelineCreated,
    PipelineRow,
    TaskRow,
)
from leapi_server.store.schema import DeliveryState, TaskState
from leapi_server.store.tasks import TaskQueue
from leapi_server.store.webhooks import WebhookTable

__all__ = [
    "ClaimedTask",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryRecord",
    "DeliveryState",
    "PipelineCreated",
    "PipelineRow",
    "Store",
    "TaskRow",
    "TaskState",
    "UnsupportedDatabaseUrlError",
]


class UnsupportedDatabaseUrlError(ValueError):
    """A ``--database-url`` that is neither ``sqlite:///PATH`` nor ``postgresql://...``."""


#: URL schemes of ``--database-url`` served by PostgreSQL (libpq accepts both spellings).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"


def check_database_url(url: str) -> str:
    """``url`` if this server can use it; :class:`UnsupportedDatabaseUrlError` saying why not."""
    if url.startswith(POSTGRES_SCHEMES):
        return url
    if url.startswith(SQLITE_SCHEME) and len(url) > len(SQLITE_SCHEME):
        return url
    raise UnsupportedDatabaseUrlError(
        f"unsupported database URL {url.split('@')[-1]!r}: use sqlite:///PATH or "
        "postgresql://user[:password]@host:port/dbname"
    )


def open_database(url: str, *, pool_size: int = 10) -> Database:
    """The database behind a checked ``--database-url`` (creating or migrating its schema).

    :param pool_size: PostgreSQL connections kept at most (unused for SQLite).
    :raises leapi_server.store.postgres.DatabaseUnavailableError: PostgreSQL cannot be reached.
    """
    check_database_url(url)
    if url.startswith(SQLITE_SCHEME):
        return SqliteDatabase(path=Path(url[len(SQLITE_SCHEME) :]))
    try:  # imported here: psycopg is the optional ``postgres`` extra
        from leapi_server.store.postgres import PostgresDatabase
    except ImportError as exc:
        raise DatabaseUnavailableError(
            f"--database-url postgresql:// needs psycopg ({exc}): install leapi-server[postgres]"
        ) from exc

    return PostgresDatabase(url=url, pool_size=pool_size)


class Store:
    """The store: one database, its table groups sharing it and one clock.

    :param database: the backend (:func:`open_database`); ``path`` is the shortcut for a SQLite file.
    :param path: the SQLite database file (created with its tables when missing).
    :param clock: every timestamp the store writes or compares against.
    """

    def __init__(
        self, *, database: Database | None = None, path: Path | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if database is None:
            if path is None:
                raise TypeError("Store needs a database or a path")
            database = SqliteDatabase(path=path)
        self.database = database
        self.pipelines = PipelineTable(database=self.database, clock=clock)
        self.tasks = TaskQueue(database=self.database, clock=clock)
        self.webhooks = WebhookTable(database=self.database, clock=clock)

    def close(self) -> None:
        """Close the calling thread's connection (SQLite) or the connection pool (PostgreSQL)."""
        self.database.close()
