"""Webhook deliveries (``webhook_deliveries``) and every attempt at one (``webhook_attempts``).

A delivery row is created by the transaction that finishes its pipeline (``tasks``); this table moves
it through PENDING -> DELIVERED / FAILED.
"""

from __future__ import annotations

from leapi_server.clock import Clock
from leapi_server.store.database import Database
from leapi_server.store.rows import Delivery, DeliveryAttempt, DeliveryRecord
from leapi_server.store.schema import DeliveryState


class WebhookTable:
    """Due deliveries, their frozen bodies and recorded attempts.

    :param database: the shared SQLite database.
    :param clock: decides which deliveries are due.
    """

    def __init__(self, *, database: Database, clock: Clock) -> None:
        self._db = database
        self._clock = clock

    def due(self, *, limit: int = 32) -> list[Delivery]:
        """Pending deliveries whose next attempt is due now, the longest waiting first."""
        rows = (
            self._db.connection()
            .execute(
                "SELECT id, pipeline_id, url, body, attempts FROM webhook_deliveries "
                "WHERE state=? AND next_attempt_at<=? ORDER BY next_attempt_at LIMIT ?",
                (DeliveryState.PENDING.value, self._clock(), limit),
            )
            .fetchall()
        )
        return [
            Delivery(
                id=r["id"], pipeline_id=r["pipeline_id"], url=r["url"], body=r["body"], attempts=r["attempts"]
            )
            for r in rows
        ]

    def next_attempt_at(self) -> float | None:
        """When the earliest pending delivery is due (Unix seconds), or None when none is pending."""
        row = (
            self._db.connection()
            .execute(
                "SELECT MIN(next_attempt_at) AS t FROM webhook_deliveries WHERE state=?",
                (DeliveryState.PENDING.value,),
            )
            .fetchone()
        )
        return None if row["t"] is None else float(row["t"])

    def freeze_body(self, delivery_id: str, body: bytes) -> bytes:
        """Keep the first rendered body so that every retry sends the same bytes; returns the kept body."""
        with self._db.write() as conn:
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
        with self._db.write() as conn:
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
                state, next_at, finished = DeliveryState.DELIVERED, None, started_at + duration_s
            elif retry_at is None:
                state, next_at, finished = DeliveryState.FAILED, None, started_at + duration_s
            else:
                state, next_at, finished = DeliveryState.PENDING, retry_at, None
            conn.execute(
                "UPDATE webhook_deliveries SET attempts=?, state=?, next_attempt_at=?, finished_at=? WHERE id=?",
                (attempt, state.value, next_at, finished, delivery_id),
            )

    def for_pipeline(self, pipeline_id: int) -> list[DeliveryRecord]:
        """Every delivery of a pipeline with all its attempts, oldest attempt first."""
        conn = self._db.connection()
        records = []
        for d in conn.execute(
            "SELECT id, url, state, next_attempt_at FROM webhook_deliveries WHERE pipeline_id=?",
            (pipeline_id,),
        ).fetchall():
            attempts = [
                DeliveryAttempt(
                    attempt=a["attempt"],
                    started_at=a["started_at"],
                    duration_s=a["duration_s"],
                    status_code=a["status_code"],
                    error=a["error"],
                )
                for a in conn.execute(
                    "SELECT * FROM webhook_attempts WHERE delivery_id=? ORDER BY attempt", (d["id"],)
                ).fetchall()
            ]
            records.append(
                DeliveryRecord(
                    id=d["id"],
                    url=d["url"],
                    state=DeliveryState(d["state"]),
                    attempts=attempts,
                    next_attempt_at=d["next_attempt_at"],
                )
            )
        return records
