"""Webhook deliveries (``webhook_deliveries``) and every attempt at one (``webhook_attempts``).

A delivery row is created by the transaction that finishes its pipeline (``tasks``); this table moves
it through PENDING -> DELIVERED / FAILED. With replicas, a due delivery is claimed by one boot for the
length of one attempt (``claimed_until``), so exactly one replica sends each attempt; a replica that dies
mid-attempt loses its claim when it runs out, and another sends that attempt, with the same id and body.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from leapi_server.clock import Clock
from leapi_server.store.database import Connection, Database
from leapi_server.store.rows import Delivery, DeliveryAttempt, DeliveryRecord
from leapi_server.store.schema import DeliveryState


class WebhookTable:
    """Due deliveries, their frozen bodies and recorded attempts.

    :param database: the shared database.
    :param clock: decides which deliveries are due.
    :param lease_clock: the wall clock of claims (as the task queue's leases).
    """

    def __init__(
        self, *, database: Database, clock: Clock, lease_clock: Callable[[], float] = time.time
    ) -> None:
        self._db = database
        self._clock = clock
        self._lease_clock = lease_clock

    def due(self, *, limit: int = 32, boot_id: str = "", claim_s: float = 60.0) -> list[Delivery]:
        """Claim pending deliveries whose next attempt is due now, the longest waiting first.

        :param boot_id: the claiming server boot; a delivery already claimed (by any boot, this one
            included: it is in flight) is skipped until its claim runs out.
        :param claim_s: how long the claim lasts: longer than one attempt (its timeout).
        """
        with self._db.write() as conn:
            lease_now = self._lease_clock()
            rows = conn.execute(
                "SELECT t.id, t.pipeline_id, t.url, t.body, t.attempts FROM webhook_deliveries t "
                "WHERE t.state=? AND t.next_attempt_at<=? "
                "AND (t.claimed_by IS NULL OR t.claimed_until<?) "
                "ORDER BY t.next_attempt_at LIMIT ?" + self._db.skip_locked,
                (DeliveryState.PENDING.value, self._clock(), lease_now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE webhook_deliveries SET claimed_by=?, claimed_until=? WHERE id=?",
                [(boot_id, lease_now + claim_s, r["id"]) for r in rows],
            )
        return [
            Delivery(
                id=r["id"], pipeline_id=r["pipeline_id"], url=r["url"], body=r["body"], attempts=r["attempts"]
            )
            for r in rows
        ]

    def next_attempt_at(self) -> float | None:
        """When the earliest pending delivery is due (Unix seconds), or None when none is pending."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT MIN(next_attempt_at) AS t FROM webhook_deliveries WHERE state=?",
                (DeliveryState.PENDING.value,),
            ).fetchone()
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
        boot_id: str = "",
    ) -> bool:
        """Log one attempt; mark the delivery DELIVERED, reschedule it, or (``retry_at`` None) give up.

        :param boot_id: the boot that claimed the delivery: an attempt whose claim was taken over by
            another replica meanwhile is not recorded (that replica's attempt counts instead).
        :returns: whether the attempt was recorded.
        """
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT attempts, claimed_by FROM webhook_deliveries WHERE id=?" + self._db.for_update,
                (delivery_id,),
            ).fetchone()
            if row is None or (row["claimed_by"] is not None and row["claimed_by"] != boot_id):
                return False
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
                "UPDATE webhook_deliveries SET attempts=?, state=?, next_attempt_at=?, finished_at=?, "
                "claimed_by=NULL, claimed_until=NULL WHERE id=?",
                (attempt, state.value, next_at, finished, delivery_id),
            )
            return True

    def for_pipeline(self, pipeline_id: int) -> list[DeliveryRecord]:
        """Every delivery of a pipeline with all its attempts, oldest attempt first."""
        with self._db.snapshot() as conn:
            return self._records(conn, pipeline_id)

    def _records(self, conn: Connection, pipeline_id: int) -> list[DeliveryRecord]:
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
