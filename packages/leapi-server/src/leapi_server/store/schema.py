"""The SQLite schema of ``leapi-server`` and the states its rows move through.

Tables: ``pipelines`` (accepted requests; ``status`` is the documented ``PipelineStatus``), ``tasks``
(one per source URL; its state is the lease: PENDING -> RUNNING (claimed by one server boot) -> DONE /
FAILED), ``ledger`` (credits, written in the transaction that accepts, unique per pipeline: charged
exactly once), ``idempotency`` (Idempotency-Key extension), ``webhook_deliveries`` and
``webhook_attempts``.
"""

from __future__ import annotations

import enum

SCHEMA = """
CREATE TABLE IF NOT EXISTS pipelines (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    notify_url TEXT,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS pipelines_by_owner ON pipelines(owner, id);
CREATE INDEX IF NOT EXISTS pipelines_by_status ON pipelines(status);

CREATE TABLE IF NOT EXISTS tasks (
    pipeline_id INTEGER NOT NULL REFERENCES pipelines(id),
    idx INTEGER NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    claimed_at REAL,
    finished_at REAL,
    input TEXT,
    output TEXT,
    output_key TEXT,
    expires_at REAL,
    collected INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    PRIMARY KEY (pipeline_id, idx)
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state, pipeline_id, idx);
CREATE INDEX IF NOT EXISTS tasks_by_expiry ON tasks(collected, expires_at);

CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    pipeline_id INTEGER NOT NULL UNIQUE REFERENCES pipelines(id),
    period TEXT NOT NULL,
    credits INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_by_owner ON ledger(owner, period);

CREATE TABLE IF NOT EXISTS idempotency (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    pipeline_id INTEGER NOT NULL REFERENCES pipelines(id),
    created_at REAL NOT NULL,
    PRIMARY KEY (owner, key)
);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    pipeline_id INTEGER NOT NULL UNIQUE REFERENCES pipelines(id),
    url TEXT NOT NULL,
    body BLOB,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON webhook_deliveries(state, next_attempt_at);

CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries(id),
    attempt INTEGER NOT NULL,
    started_at REAL NOT NULL,
    duration_s REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
"""


class TaskState(str, enum.Enum):
    """The lease of one image: RUNNING rows belong to the boot that claimed them."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"


class DeliveryState(str, enum.Enum):
    """A webhook delivery (shown by the ``GET /v1/pipeline/{id}/webhooks`` extension)."""

    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
