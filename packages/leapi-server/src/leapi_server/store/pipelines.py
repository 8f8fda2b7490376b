"""Accepting pipelines: ``pipelines`` with their ``tasks``, the credit ``ledger`` and ``idempotency`` keys,
written together so that a pipeline is charged exactly once."""

from __future__ import annotations

import json
from typing import Any

from leapi.models import PipelineStatus
from leapi_server.clock import Clock, month_period
from leapi_server.outcomes import IdempotencyConflict, QuotaExceeded
from leapi_server.store.database import Connection, Database
from leapi_server.store.rows import PipelineCreated, PipelineRow, TaskRow, pipeline_row, task_row
from leapi_server.store.schema import TaskState


class PipelineTable:
    """Pipelines, the ledger and idempotency keys.

    :param database: the shared database.
    :param clock: stamps ``submitted_at`` and picks the quota period.
    """

    def __init__(self, *, database: Database, clock: Clock) -> None:
        self._db = database
        self._clock = clock

    def accept(
        self,
        *,
        owner: str,
        request: dict[str, Any],
        urls: list[str],
        notify_url: str | None,
        quota: int,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        idempotency_ttl_s: float = 86400.0,
    ) -> PipelineCreated | QuotaExceeded | IdempotencyConflict:
        """Create the pipeline, its tasks and its ledger entry in one transaction (or refuse).

        :param owner: the account (hash of the API key).
        :param request: the request as stored and echoed back (wire JSON).
        :param urls: the source URLs, one task and one credit each.
        :param notify_url: where the webhook goes when the pipeline finishes.
        :param quota: credits per calendar month; 0 means unlimited.
        :param idempotency_key: the client's Idempotency-Key, if any.
        :param body_hash: what identifies the request body for that key.
        :param idempotency_ttl_s: how long a key is remembered.
        """
        with self._db.write() as conn:
            self._db.lock_owner(conn, owner)
            now = self._clock()
            if idempotency_key is not None:
                row = conn.execute(
                    "SELECT body_hash, pipeline_id FROM idempotency WHERE owner=? AND key=? AND created_at>?",
                    (owner, idempotency_key, now - idempotency_ttl_s),
                ).fetchone()
                if row is not None:
                    if row["body_hash"] != body_hash:
                        return IdempotencyConflict(key=idempotency_key, pipeline_id=row["pipeline_id"])
                    return PipelineCreated(pipeline_id=row["pipeline_id"], replayed=True)
            period, _start, period_end = month_period(now)
            if quota:
                used = _used(conn, owner, period)
                if used + len(urls) > quota:
                    return QuotaExceeded(requested=len(urls), used=used, quota=quota, resets_at=period_end)
            pipeline_id = int(
                conn.execute(
                    "INSERT INTO pipelines(owner, status, request, notify_url, submitted_at) VALUES (?,?,?,?,?) "
                    "RETURNING id",
                    (owner, PipelineStatus.PROCESSING.value, json.dumps(request), notify_url, now),
                ).fetchone()["id"]
            )
            conn.executemany(
                "INSERT INTO tasks(pipeline_id, idx, url, state) VALUES (?,?,?,?)",
                [(pipeline_id, i, url, TaskState.PENDING.value) for i, url in enumerate(urls)],
            )
            conn.execute(
                "INSERT INTO ledger(owner, pipeline_id, period, credits, created_at) VALUES (?,?,?,?,?)",
                (owner, pipeline_id, period, len(urls), now),
            )
            if idempotency_key is not None:
                conn.execute(
                    "INSERT INTO idempotency(owner, key, body_hash, pipeline_id, created_at) VALUES (?,?,?,?,?) "
                    "ON CONFLICT (owner, key) DO UPDATE SET body_hash=excluded.body_hash, "
                    "pipeline_id=excluded.pipeline_id, created_at=excluded.created_at",
                    (owner, idempotency_key, body_hash, pipeline_id, now),
                )
            return PipelineCreated(pipeline_id=pipeline_id)

    def get(self, pipeline_id: int) -> tuple[PipelineRow, list[TaskRow]] | None:
        """A pipeline and its tasks (in source order), read in one snapshot."""
        with self._db.snapshot() as conn:
            row = conn.execute("SELECT * FROM pipelines WHERE id=?", (pipeline_id,)).fetchone()
            if row is None:
                return None
            tasks = conn.execute(
                "SELECT * FROM tasks WHERE pipeline_id=? ORDER BY idx", (pipeline_id,)
            ).fetchall()
        return pipeline_row(row), [task_row(t) for t in tasks]

    def used_credits(self, owner: str, period: str) -> int:
        """Credits charged to ``owner`` in the ``YYYY-MM`` period."""
        with self._db.read() as conn:
            return _used(conn, owner, period)

    def ledger_entries(self, owner: str | None = None) -> list[tuple[int, int]]:
        """(pipeline id, credits) of every charge, for audits and tests."""
        sql = "SELECT pipeline_id, credits FROM ledger"
        with self._db.read() as conn:
            rows = conn.execute(
                sql + (" WHERE owner=?" if owner else ""), (owner,) if owner else ()
            ).fetchall()
        return [(int(r["pipeline_id"]), int(r["credits"])) for r in rows]

    def forget_idempotency_keys(self, *, ttl_s: float) -> int:
        """Delete keys older than ``ttl_s``; returns how many."""
        with self._db.write() as conn:
            older_than = self._clock() - ttl_s
            return conn.execute("DELETE FROM idempotency WHERE created_at<?", (older_than,)).rowcount


def _used(conn: Connection, owner: str, period: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(SUM(credits), 0) AS used FROM ledger WHERE owner=? AND period=?", (owner, period)
    ).fetchone()
    return int(row["used"])
