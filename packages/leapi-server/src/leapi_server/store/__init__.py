"""Durable state of ``leapi-server``: one SQLite database (WAL) under ``--data-dir``.

One table group per module: ``pipelines`` (accepting: pipelines, ledger, idempotency keys), ``tasks``
(the work queue and output expiry), ``webhooks`` (deliveries and attempts); ``schema`` holds the
tables and their states, ``database`` the connection discipline, ``rows`` the records handed out.
"""

from __future__ import annotations

from pathlib import Path

from leapi_server.clock import SYSTEM_CLOCK, Clock
from leapi_server.store.database import Database
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
]


class Store:
    """The SQLite store: one database, its table groups sharing it and one clock.

    :param path: the database file (created with its tables when missing).
    :param clock: every timestamp the store writes or compares against.
    """

    def __init__(self, *, path: Path, clock: Clock = SYSTEM_CLOCK) -> None:
        self.database = Database(path=path)
        self.pipelines = PipelineTable(database=self.database, clock=clock)
        self.tasks = TaskQueue(database=self.database, clock=clock)
        self.webhooks = WebhookTable(database=self.database, clock=clock)

    def close(self) -> None:
        """Close the calling thread's connection."""
        self.database.close()
