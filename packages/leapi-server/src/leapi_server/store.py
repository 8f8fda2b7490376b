"""Durable state of ``leapi-server``: one SQLite database (WAL) under ``--data-dir``.

Tables: ``pipelines`` (accepted requests), ``tasks`` (one per source URL; its state is the lease:
PENDING -> RUNNING (claimed by one server boot) -> DONE / FAILED), ``ledger`` (credits, written in the
transaction that accepts, unique per pipeline: charged exactly once), ``idempotency`` (Idempotency-Key
extension), ``webhook_deliveries`` and ``webhook_attempts``.

Every method is one short transaction; writes are serialized by a lock (SQLite has one writer anyway)
and run ``BEGIN IMMEDIATE`` so that check-then-write sequences (quota, idempotency) are atomic.
Methods are blocking: the app calls them from a thread, never on the event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

# Task states (the lease): RUNNING rows belong to the boot that claimed them.
PENDING, RUNNING, DONE, FAILED = "PENDING", "RUNNING", "DONE", "FAILED"
TERMINAL_TASK_STATES = (DONE, FAILED)
# Webhook delivery states.
DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_FAILED = "PENDING", "DELIVERED", "FAILED"


@dataclass(frozen=True)
class PipelineRow:
    id: int
    owner: str
    status: str
    request: dict[str, Any]
    notify_url: str | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None


@dataclass(frozen=True)
class TaskRow:
    pipeline_id: int
    index: int
    url: str
    state: str
    attempts: int
    finished_at: float | None
    input: dict[str, Any] | None
    output: dict[str, Any] | None
    output_key: str | None
    expires_at: float | None
    error: str | None


@dataclass(frozen=True)
class ClaimedTask:
    pipeline_id: int
    index: int
    url: str
    operations: tuple[dict[str, Any], ...]
    attempts: int


@dataclass(frozen=True)
class Accepted:
    pipeline_id: int
    #: True when an Idempotency-Key matched an earlier request: nothing new was created or charged.
    replayed: bool = False


@dataclass(frozen=True)
class QuotaExceeded:
    used: int
    quota: int
    requested: int


@dataclass(frozen=True)
class IdempotencyConflict:
    pipeline_id: int


@dataclass(frozen=True)
class Delivery:
    id: str
    pipeline_id: int
    url: str
    body: bytes | None
    attempts: int


@dataclass(frozen=True)
class DeliveryAttempt:
    attempt: int
    started_at: float
    duration_s: float
    status_code: int | None
    error: str | None


@dataclass(frozen=True)
class DeliveryRecord:
    id: str
    url: str
    state: str
    attempts: list[DeliveryAttempt]
    next_attempt_at: float | None


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Store:
    """The SQLite store. Thread-safe: one connection per thread, one writer at a time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        with self._lock_free_connection() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)

    @contextmanager
    def _lock_free_connection(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            yield conn
        finally:
            conn.close()

    def _conn(self) -> sqlite3.Connection:
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
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self) -> sqlite3.Connection:
        return self._conn()

    # -- submit -------------------------------------------------------------------------------------

    def accept_pipeline(
        self,
        *,
        owner: str,
        request: dict[str, Any],
        urls: list[str],
        notify_url: str | None,
        period: str,
        quota: int,
        now: float,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        idempotency_ttl_s: float = 86400.0,
    ) -> Accepted | QuotaExceeded | IdempotencyConflict:
        """Create the pipeline, its tasks and its ledger entry in one transaction (or refuse).

        :param quota: credits per period; 0 means unlimited.
        """
        with self._write() as conn:
            if idempotency_key is not None:
                row = conn.execute(
                    "SELECT body_hash, pipeline_id FROM idempotency WHERE owner=? AND key=? AND created_at>?",
                    (owner, idempotency_key, now - idempotency_ttl_s),
                ).fetchone()
                if row is not None:
                    if row["body_hash"] != body_hash:
                        return IdempotencyConflict(row["pipeline_id"])
                    return Accepted(row["pipeline_id"], replayed=True)
            if quota:
                used = self._used(conn, owner, period)
                if used + len(urls) > quota:
                    return QuotaExceeded(used=used, quota=quota, requested=len(urls))
            cursor = conn.execute(
                "INSERT INTO pipelines(owner, status, request, notify_url, submitted_at) VALUES (?,?,?,?,?)",
                (owner, "PROCESSING", json.dumps(request), notify_url, now),
            )
            pipeline_id = int(cursor.lastrowid)  # type: ignore[arg-type]
            conn.executemany(
                "INSERT INTO tasks(pipeline_id, idx, url, state) VALUES (?,?,?,?)",
                [(pipeline_id, i, url, PENDING) for i, url in enumerate(urls)],
            )
            conn.execute(
                "INSERT INTO ledger(owner, pipeline_id, period, credits, created_at) VALUES (?,?,?,?,?)",
                (owner, pipeline_id, period, len(urls), now),
            )
            if idempotency_key is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency(owner, key, body_hash, pipeline_id, created_at) "
                    "VALUES (?,?,?,?,?)",
                    (owner, idempotency_key, body_hash, pipeline_id, now),
                )
            return Accepted(pipeline_id)

    @staticmethod
    def _used(conn: sqlite3.Connection, owner: str, period: str) -> int:
        row = conn.execute(
            "SELECT COALESCE(SUM(credits), 0) AS used FROM ledger WHERE owner=? AND period=?", (owner, period)
        ).fetchone()
        return int(row["used"])

    def used_credits(self, owner: str, period: str) -> int:
        return self._used(self._read(), owner, period)

    def ledger_entries(self, owner: str | None = None) -> list[tuple[int, int]]:
        """(pipeline id, credits) of every charge, for audits and tests."""
        sql = "SELECT pipeline_id, credits FROM ledger"
        rows = self._read().execute(sql + (" WHERE owner=?" if owner else ""), (owner,) if owner else ())
        return [(int(r["pipeline_id"]), int(r["credits"])) for r in rows]

    # -- read -----------------------------------------------------------------------------------------

    def get_pipeline(self, pipeline_id: int) -> tuple[PipelineRow, list[TaskRow]] | None:
        conn = self._read()
        conn.execute("BEGIN")  # one snapshot for the pipeline and its tasks
        try:
            row = conn.execute("SELECT * FROM pipelines WHERE id=?", (pipeline_id,)).fetchone()
            if row is None:
                return None
            tasks = conn.execute(
                "SELECT * FROM tasks WHERE pipeline_id=? ORDER BY idx", (pipeline_id,)
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        return _pipeline_row(row), [_task_row(t) for t in tasks]

    # -- work -------------------------------------------------------------------------------------------

    def recover(self, *, max_attempts: int, now: float) -> int:
        """At start: every RUNNING task belongs to a dead boot (the data dir is locked to one server), so
        its lease is stale: put it back to PENDING, or fail it if it was interrupted too often.

        Returns the number of tasks re-queued.
        """
        with self._write() as conn:
            stale = conn.execute(
                "SELECT pipeline_id, idx, attempts FROM tasks WHERE state=?", (RUNNING,)
            ).fetchall()
            requeued = 0
            touched = set()
            for task in stale:
                if task["attempts"] >= max_attempts:
                    self._fail_interrupted(conn, task["pipeline_id"], task["idx"], task["attempts"], now)
                    touched.add(task["pipeline_id"])
                else:
                    conn.execute(
                        "UPDATE tasks SET state=?, claimed_by=NULL WHERE pipeline_id=? AND idx=?",
                        (PENDING, task["pipeline_id"], task["idx"]),
                    )
                    requeued += 1
            # Also pipelines whose last task ended right before a crash (belt and braces).
            for row in conn.execute("SELECT id FROM pipelines WHERE status='PROCESSING'").fetchall():
                touched.add(row["id"])
            for pipeline_id in touched:
                self._maybe_finish(conn, pipeline_id, now)
            return requeued

    def claim_tasks(self, *, limit: int, boot_id: str, now: float) -> list[ClaimedTask]:
        """Lease up to ``limit`` pending tasks (oldest pipeline first) to this boot."""
        if limit <= 0:
            return []
        with self._write() as conn:
            rows = conn.execute(
                "SELECT t.pipeline_id, t.idx, t.url, t.attempts, p.request FROM tasks t "
                "JOIN pipelines p ON p.id = t.pipeline_id WHERE t.state=? ORDER BY t.pipeline_id, t.idx LIMIT ?",
                (PENDING, limit),
            ).fetchall()
            claimed = []
            for row in rows:
                conn.execute(
                    "UPDATE tasks SET state=?, claimed_by=?, claimed_at=?, attempts=attempts+1 "
                    "WHERE pipeline_id=? AND idx=?",
                    (RUNNING, boot_id, now, row["pipeline_id"], row["idx"]),
                )
                # (the claim's clock was read before the submit that made this task claimable committed)
                conn.execute(
                    "UPDATE pipelines SET started_at=MAX(?, submitted_at) WHERE id=? AND started_at IS NULL",
                    (now, row["pipeline_id"]),
                )
                operations = tuple(json.loads(row["request"])["operations"])
                claimed.append(
                    ClaimedTask(row["pipeline_id"], row["idx"], row["url"], operations, row["attempts"] + 1)
                )
            return claimed

    def complete_task(
        self,
        *,
        pipeline_id: int,
        index: int,
        boot_id: str,
        now: float,
        input_meta: dict[str, Any] | None,
        output_meta: dict[str, Any] | None,
        output_key: str | None,
        expires_at: float | None,
        error: str | None,
    ) -> bool:
        """Record a task's outcome (only if this boot still holds its lease); finish the pipeline when it
        was the last one. Returns True when the pipeline finished with this call."""
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE tasks SET state=?, finished_at=?, input=?, output=?, output_key=?, expires_at=?, error=? "
                "WHERE pipeline_id=? AND idx=? AND state=? AND claimed_by=?",
                (
                    FAILED if error else DONE,
                    now,
                    None if input_meta is None else json.dumps(input_meta),
                    None if output_meta is None else json.dumps(output_meta),
                    output_key,
                    expires_at,
                    error,
                    pipeline_id,
                    index,
                    RUNNING,
                    boot_id,
                ),
            ).rowcount
            if not updated:
                return False
            return self._maybe_finish(conn, pipeline_id, now)

    def release_task(
        self,
        *,
        pipeline_id: int,
        index: int,
        boot_id: str,
        max_attempts: int,
        now: float,
        count_attempt: bool = True,
    ) -> bool:
        """The worker running this task died: re-queue it, or fail it after ``max_attempts``.

        :param count_attempt: False when the task is known to be innocent (its pool was stopped because of
            another image): it goes back to the queue without using up one of its attempts.
        Returns True when the pipeline finished with this call."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT attempts FROM tasks WHERE pipeline_id=? AND idx=? AND state=? AND claimed_by=?",
                (pipeline_id, index, RUNNING, boot_id),
            ).fetchone()
            if row is None:
                return False
            if count_attempt and row["attempts"] >= max_attempts:
                self._fail_interrupted(conn, pipeline_id, index, row["attempts"], now)
                return self._maybe_finish(conn, pipeline_id, now)
            conn.execute(
                "UPDATE tasks SET state=?, claimed_by=NULL, attempts=attempts-? WHERE pipeline_id=? AND idx=?",
                (PENDING, 0 if count_attempt else 1, pipeline_id, index),
            )
            return False

    @staticmethod
    def _fail_interrupted(
        conn: sqlite3.Connection, pipeline_id: int, index: int, attempts: int, now: float
    ) -> None:
        conn.execute(
            "UPDATE tasks SET state=?, finished_at=?, error=? WHERE pipeline_id=? AND idx=?",
            (
                FAILED,
                now,
                (
                    f"processing this image was interrupted {attempts} times (worker crash or server restart); "
                    "giving up on it"
                ),
                pipeline_id,
                index,
            ),
        )

    @staticmethod
    def _maybe_finish(conn: sqlite3.Connection, pipeline_id: int, now: float) -> bool:
        pipeline = conn.execute(
            "SELECT status, notify_url FROM pipelines WHERE id=?", (pipeline_id,)
        ).fetchone()
        if pipeline is None or pipeline["status"] != "PROCESSING":
            return False
        counts = conn.execute(
            "SELECT SUM(state=?) AS done, SUM(state=?) AS failed, COUNT(*) AS total FROM tasks WHERE pipeline_id=?",
            (DONE, FAILED, pipeline_id),
        ).fetchone()
        done, failed, total = int(counts["done"] or 0), int(counts["failed"] or 0), int(counts["total"])
        if done + failed < total:
            return False
        status = "DONE" if done else "ERROR"
        error = None if done else f"all {total} image(s) failed; see errors"
        conn.execute(
            "UPDATE pipelines SET status=?, finished_at=?, error=?, started_at=COALESCE(started_at, ?) WHERE id=?",
            (status, now, error, now, pipeline_id),
        )
        if pipeline["notify_url"]:
            # Created in the same transaction as the status change: a crash cannot lose the webhook.
            # The id is stable across retries (Standard Webhooks ``webhook-id``).
            conn.execute(
                "INSERT OR IGNORE INTO webhook_deliveries(id, pipeline_id, url, state, next_attempt_at, created_at) "
                "VALUES (?,?,?,?,?,?)",
                (
                    f"msg_{pipeline_id}_{int(now * 1000)}",
                    pipeline_id,
                    pipeline["notify_url"],
                    DELIVERY_PENDING,
                    now,
                    now,
                ),
            )
        return True

    def count_by_state(self) -> dict[str, int]:
        rows = self._read().execute("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state").fetchall()
        return {r["state"]: int(r["n"]) for r in rows}

    # -- webhooks ---------------------------------------------------------------------------------------

    def due_deliveries(self, *, now: float, limit: int = 32) -> list[Delivery]:
        rows = (
            self._read()
            .execute(
                "SELECT id, pipeline_id, url, body, attempts FROM webhook_deliveries "
                "WHERE state=? AND next_attempt_at<=? ORDER BY next_attempt_at LIMIT ?",
                (DELIVERY_PENDING, now, limit),
            )
            .fetchall()
        )
        return [Delivery(r["id"], r["pipeline_id"], r["url"], r["body"], r["attempts"]) for r in rows]

    def next_delivery_at(self) -> float | None:
        row = (
            self._read()
            .execute(
                "SELECT MIN(next_attempt_at) AS t FROM webhook_deliveries WHERE state=?", (DELIVERY_PENDING,)
            )
            .fetchone()
        )
        return None if row["t"] is None else float(row["t"])

    def freeze_delivery_body(self, delivery_id: str, body: bytes) -> bytes:
        """Keep the first rendered body so that every retry sends the same bytes; returns the kept body."""
        with self._write() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET body=? WHERE id=? AND body IS NULL", (body, delivery_id)
            )
            row = conn.execute("SELECT body FROM webhook_deliveries WHERE id=?", (delivery_id,)).fetchone()
            return bytes(row["body"])

    def record_attempt(
        self,
        *,
        delivery_id: str,
        started_at: float,
        duration_s: float,
        status_code: int | None,
        error: str | None,
        delivered: bool,
        retry_at: float | None,
    ) -> None:
        """Log one attempt; mark the delivery DELIVERED, reschedule it, or (``retry_at`` None) give up."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT attempts FROM webhook_deliveries WHERE id=?", (delivery_id,)
            ).fetchone()
            attempt = int(row["attempts"]) + 1
            conn.execute(
                "INSERT INTO webhook_attempts(delivery_id, attempt, started_at, duration_s, status_code, error) "
                "VALUES (?,?,?,?,?,?)",
                (delivery_id, attempt, started_at, duration_s, status_code, error),
            )
            if delivered:
                state, next_at, finished = DELIVERY_DELIVERED, None, started_at + duration_s
            elif retry_at is None:
                state, next_at, finished = DELIVERY_FAILED, None, started_at + duration_s
            else:
                state, next_at, finished = DELIVERY_PENDING, retry_at, None
            conn.execute(
                "UPDATE webhook_deliveries SET attempts=?, state=?, next_attempt_at=?, finished_at=? WHERE id=?",
                (attempt, state, next_at, finished, delivery_id),
            )

    def deliveries_for(self, pipeline_id: int) -> list[DeliveryRecord]:
        conn = self._read()
        out = []
        for d in conn.execute(
            "SELECT id, url, state, next_attempt_at FROM webhook_deliveries WHERE pipeline_id=?",
            (pipeline_id,),
        ).fetchall():
            attempts = [
                DeliveryAttempt(a["attempt"], a["started_at"], a["duration_s"], a["status_code"], a["error"])
                for a in conn.execute(
                    "SELECT * FROM webhook_attempts WHERE delivery_id=? ORDER BY attempt", (d["id"],)
                ).fetchall()
            ]
            out.append(DeliveryRecord(d["id"], d["url"], d["state"], attempts, d["next_attempt_at"]))
        return out

    # -- temp store housekeeping -----------------------------------------------------------------------

    def expired_outputs(self, *, now: float, limit: int = 1000) -> list[tuple[int, int, str]]:
        rows = (
            self._read()
            .execute(
                "SELECT pipeline_id, idx, output_key FROM tasks WHERE collected=0 AND output_key IS NOT NULL "
                "AND expires_at<? LIMIT ?",
                (now, limit),
            )
            .fetchall()
        )
        return [(r["pipeline_id"], r["idx"], r["output_key"]) for r in rows]

    def mark_collected(self, items: list[tuple[int, int]]) -> None:
        with self._write() as conn:
            conn.executemany("UPDATE tasks SET collected=1 WHERE pipeline_id=? AND idx=?", items)

    def live_output_keys(self) -> set[str]:
        rows = (
            self._read()
            .execute("SELECT output_key FROM tasks WHERE collected=0 AND output_key IS NOT NULL")
            .fetchall()
        )
        return {r["output_key"] for r in rows}

    def forget_idempotency_keys(self, *, older_than: float) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM idempotency WHERE created_at<?", (older_than,)).rowcount

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _pipeline_row(row: sqlite3.Row) -> PipelineRow:
    return PipelineRow(
        id=row["id"],
        owner=row["owner"],
        status=row["status"],
        request=json.loads(row["request"]),
        notify_url=row["notify_url"],
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
    )


def _task_row(row: sqlite3.Row) -> TaskRow:
    return TaskRow(
        pipeline_id=row["pipeline_id"],
        index=row["idx"],
        url=row["url"],
        state=row["state"],
        attempts=row["attempts"],
        finished_at=row["finished_at"],
        input=_loads(row["input"]),
        output=_loads(row["output"]),
        output_key=row["output_key"],
        expires_at=row["expires_at"],
        error=row["error"],
    )
