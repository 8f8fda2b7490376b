"""The work queue: one ``tasks`` row per source URL, leased to one server boot while a worker has it.

A lease is the task's ``claimed_by`` (the boot) and ``lease_until``: the boot's heartbeat extends it
while the image is in flight; a lease that runs out belongs to a dead replica and the task goes back to
the queue (or fails, after ``max_attempts``). Lease times are wall-clock seconds of the replicas
(``time.time``, hosts kept in sync by NTP), never the store's injectable clock: they measure whether a
process is alive, not the service's business time.

Finishing a task may finish its pipeline; that status change and the pipeline's webhook delivery row are
written in the same transaction, so a crash can lose neither. The pipeline's row is locked first, so two
replicas finishing its last two tasks at once cannot both see the other one still running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from leapi.models import PipelineStatus
from leapi_server.clock import Clock
from leapi_server.store.database import Connection, Database
from leapi_server.store.rows import ClaimedTask
from leapi_server.store.schema import DeliveryState, TaskState

_PENDING, _RUNNING, _DONE, _FAILED = (s.value for s in TaskState)

#: Default lease of a claimed task: a replica that stops heartbeating loses its tasks this long after.
DEFAULT_LEASE_S = 30.0


class TaskQueue:
    """Claims, completions and re-queues of tasks, and the expiry of their output files.

    :param database: the shared database.
    :param clock: stamps claims and completions.
    :param lease_clock: the wall clock of leases (see the module docstring).
    """

    def __init__(
        self, *, database: Database, clock: Clock, lease_clock: Callable[[], float] = time.time
    ) -> None:
        self._db = database
        self._clock = clock
        self._lease_clock = lease_clock

    def recover(self, *, max_attempts: int, all_running: bool = False) -> int:
        """Take back leases of dead boots: put their tasks back to PENDING, or fail the ones interrupted
        too often.

        :param max_attempts: a task interrupted this often fails instead of running again.
        :param all_running: every RUNNING lease is stale, expired or not (at start, when this server is
            the database's only user); otherwise only leases past ``lease_until`` are.
        :returns: the number of tasks re-queued.
        """
        with self._db.write() as conn:
            now = self._clock()
            if all_running:
                stale = conn.execute(
                    "SELECT t.pipeline_id, t.idx, t.attempts FROM tasks t WHERE t.state=?", (_RUNNING,)
                ).fetchall()
            else:
                stale = conn.execute(
                    "SELECT t.pipeline_id, t.idx, t.attempts FROM tasks t WHERE t.state=? "
                    "AND (t.lease_until IS NULL OR t.lease_until<?) ORDER BY t.pipeline_id, t.idx"
                    + self._db.skip_locked,
                    (_RUNNING, self._lease_clock()),
                ).fetchall()
            requeued = 0
            touched = set()
            for task in stale:
                if task["attempts"] >= max_attempts:
                    _fail_interrupted(conn, task["pipeline_id"], task["idx"], task["attempts"], now)
                    touched.add(task["pipeline_id"])
                else:
                    conn.execute(
                        "UPDATE tasks SET state=?, claimed_by=NULL, lease_until=NULL WHERE pipeline_id=? AND idx=?",
                        (_PENDING, task["pipeline_id"], task["idx"]),
                    )
                    requeued += 1
            if all_running:
                # Also pipelines whose last task ended right before a crash (belt and braces).
                processing = conn.execute(
                    "SELECT id FROM pipelines WHERE status=?", (PipelineStatus.PROCESSING.value,)
                ).fetchall()
                touched.update(row["id"] for row in processing)
            for pipeline_id in sorted(touched):
                _finish_pipeline_if_done(self._db, conn, pipeline_id, now)
            return requeued

    def heartbeat(self, *, boot_id: str, lease_s: float) -> int:
        """Extend every lease of this boot to ``lease_s`` from now; returns how many it holds."""
        with self._db.write() as conn:
            return conn.execute(
                "UPDATE tasks SET lease_until=? WHERE state=? AND claimed_by=?",
                (self._lease_clock() + lease_s, _RUNNING, boot_id),
            ).rowcount

    def claim(self, *, limit: int, boot_id: str, lease_s: float = DEFAULT_LEASE_S) -> list[ClaimedTask]:
        """Lease up to ``limit`` pending tasks (oldest pipeline first) to this boot for ``lease_s``.

        With replicas, each takes rows no other is taking (``SKIP LOCKED``): none waits for another.
        """
        if limit <= 0:
            return []
        with self._db.write() as conn:
            now = self._clock()
            rows = conn.execute(
                "SELECT t.pipeline_id, t.idx, t.url, t.attempts, p.request FROM tasks t "
                "JOIN pipelines p ON p.id = t.pipeline_id WHERE t.state=? ORDER BY t.pipeline_id, t.idx LIMIT ?"
                + self._db.skip_locked,
                (_PENDING, limit),
            ).fetchall()
            lease_until = self._lease_clock() + lease_s
            claimed = []
            for row in rows:
                conn.execute(
                    "UPDATE tasks SET state=?, claimed_by=?, claimed_at=?, lease_until=?, attempts=attempts+1 "
                    "WHERE pipeline_id=? AND idx=?",
                    (_RUNNING, boot_id, now, lease_until, row["pipeline_id"], row["idx"]),
                )
                # Never before submitted_at: a clock that steps back must not start a pipeline too early.
                conn.execute(
                    "UPDATE pipelines SET started_at=CASE WHEN ?>submitted_at THEN ? ELSE submitted_at END "
                    "WHERE id=? AND started_at IS NULL",
                    (now, now, row["pipeline_id"]),
                )
                claimed.append(
                    ClaimedTask(
                        pipeline_id=row["pipeline_id"],
                        index=row["idx"],
                        url=row["url"],
                        operations=tuple(json.loads(row["request"])["operations"]),
                        attempts=row["attempts"] + 1,
                    )
                )
            return claimed

    def complete(
        self,
        *,
        pipeline_id: int,
        index: int,
        boot_id: str,
        input_meta: dict[str, Any] | None,
        output_meta: dict[str, Any] | None,
        output_key: str | None,
        output_ttl_s: float,
        error: str | None,
    ) -> bool:
        """Record a task's outcome (only if this boot still holds its lease); finish the pipeline when it
        was the last one.

        :param output_ttl_s: seconds the output (its temp URL) lives from now; unused when ``error``.
        :param error: set: the image failed, with this user-facing reason.
        :returns: True when the pipeline finished with this call.
        """
        with self._db.write() as conn:
            now = self._clock()
            updated = conn.execute(
                "UPDATE tasks SET state=?, finished_at=?, input=?, output=?, output_key=?, expires_at=?, error=? "
                "WHERE pipeline_id=? AND idx=? AND state=? AND claimed_by=?",
                (
                    _FAILED if error else _DONE,
                    now,
                    None if input_meta is None else json.dumps(input_meta),
                    None if output_meta is None else json.dumps(output_meta),
                    output_key,
                    None if error else now + output_ttl_s,
                    error,
                    pipeline_id,
                    index,
                    _RUNNING,
                    boot_id,
                ),
            ).rowcount
            if not updated:
                return False
            return _finish_pipeline_if_done(self._db, conn, pipeline_id, now)

    def release_all(self, *, boot_id: str) -> int:
        """At a graceful stop: put every task this boot holds back to PENDING, without using an attempt
        (they were stopped, not crashed). Returns how many."""
        with self._db.write() as conn:
            return conn.execute(
                "UPDATE tasks SET state=?, claimed_by=NULL, lease_until=NULL, attempts=attempts-1 "
                "WHERE state=? AND claimed_by=?",
                (_PENDING, _RUNNING, boot_id),
            ).rowcount

    def release(
        self, *, pipeline_id: int, index: int, boot_id: str, max_attempts: int, count_attempt: bool = True
    ) -> bool:
        """The worker running this task died: re-queue it, or fail it after ``max_attempts``.

        :param count_attempt: False when the task is known to be innocent (its pool was stopped because of
            another image): it goes back to the queue without using up one of its attempts.
        :returns: True when the pipeline finished with this call.
        """
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT attempts FROM tasks WHERE pipeline_id=? AND idx=? AND state=? AND claimed_by=?",
                (pipeline_id, index, _RUNNING, boot_id),
            ).fetchone()
            if row is None:
                return False
            if count_attempt and row["attempts"] >= max_attempts:
                now = self._clock()
                _fail_interrupted(conn, pipeline_id, index, row["attempts"], now)
                return _finish_pipeline_if_done(self._db, conn, pipeline_id, now)
            conn.execute(
                "UPDATE tasks SET state=?, claimed_by=NULL, lease_until=NULL, attempts=attempts-? "
                "WHERE pipeline_id=? AND idx=?",
                (_PENDING, 0 if count_attempt else 1, pipeline_id, index),
            )
            return False

    def count_by_state(self) -> dict[TaskState, int]:
        with self._db.read() as conn:
            rows = conn.execute("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state").fetchall()
        return {TaskState(r["state"]): int(r["n"]) for r in rows}

    # -- output files -----------------------------------------------------------------------------------

    def expired_outputs(self, *, limit: int = 1000) -> list[tuple[int, int, str]]:
        """(pipeline id, index, output key) of outputs whose temp URL has expired and whose file is not
        yet collected."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT pipeline_id, idx, output_key FROM tasks WHERE collected=0 AND output_key IS NOT NULL "
                "AND expires_at<? LIMIT ?",
                (self._clock(), limit),
            ).fetchall()
        return [(r["pipeline_id"], r["idx"], r["output_key"]) for r in rows]

    def mark_collected(self, items: list[tuple[int, int]]) -> None:
        """The files of these (pipeline id, index) tasks were deleted."""
        with self._db.write() as conn:
            conn.executemany("UPDATE tasks SET collected=1 WHERE pipeline_id=? AND idx=?", items)

    def live_output_keys(self) -> set[str]:
        """Keys of every output file a task still references."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT output_key FROM tasks WHERE collected=0 AND output_key IS NOT NULL"
            ).fetchall()
        return {r["output_key"] for r in rows}


def _fail_interrupted(conn: Connection, pipeline_id: int, index: int, attempts: int, now: float) -> None:
    conn.execute(
        "UPDATE tasks SET state=?, finished_at=?, error=? WHERE pipeline_id=? AND idx=?",
        (
            _FAILED,
            now,
            (
                f"processing this image was interrupted {attempts} times (worker crash or server restart); "
                "giving up on it"
            ),
            pipeline_id,
            index,
        ),
    )


def _finish_pipeline_if_done(db: Database, conn: Connection, pipeline_id: int, now: float) -> bool:
    """DONE if any image succeeded, ERROR if none did, once every task is terminal; True if it finished."""
    # Locked before counting: a replica finishing another task of this pipeline now waits for us, and
    # then counts with our task's outcome committed.
    pipeline = conn.execute(
        "SELECT status, notify_url FROM pipelines WHERE id=?" + db.for_update, (pipeline_id,)
    ).fetchone()
    if pipeline is None or pipeline["status"] != PipelineStatus.PROCESSING.value:
        return False
    counts = conn.execute(
        "SELECT SUM(CASE WHEN state=? THEN 1 ELSE 0 END) AS done, SUM(CASE WHEN state=? THEN 1 ELSE 0 END) "
        "AS failed, COUNT(*) AS total FROM tasks WHERE pipeline_id=?",
        (_DONE, _FAILED, pipeline_id),
    ).fetchone()
    done, failed, total = int(counts["done"] or 0), int(counts["failed"] or 0), int(counts["total"])
    if done + failed < total:
        return False
    status = PipelineStatus.DONE if done else PipelineStatus.ERROR
    error = None if done else f"all {total} image(s) failed; see errors"
    conn.execute(
        "UPDATE pipelines SET status=?, finished_at=?, error=?, started_at=COALESCE(started_at, ?) WHERE id=?",
        (status.value, now, error, now, pipeline_id),
    )
    if pipeline["notify_url"]:
        # Created in the same transaction as the status change: a crash cannot lose the webhook.
        # The id is stable across retries (Standard Webhooks ``webhook-id``).
        conn.execute(
            "INSERT INTO webhook_deliveries(id, pipeline_id, url, state, next_attempt_at, created_at) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (
                f"msg_{pipeline_id}_{int(now * 1000)}",
                pipeline_id,
                pipeline["notify_url"],
                DeliveryState.PENDING.value,
                now,
                now,
            ),
        )
    return True
