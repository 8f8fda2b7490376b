"""The dispatcher: leases pending tasks from the store, runs them on the worker-process pool, publishes
their outputs to the temp store and records their outcomes. Lives on the API event loop but only awaits:
image work happens in other processes and database calls in threads.

Its leases are kept alive by :meth:`Dispatcher.keep_leases` (a heartbeat every third of ``--lease-seconds``),
which also takes back the expired leases of dead replicas. Outcomes are recorded until the database takes
them: a database restart delays them, it does not lose them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import signal
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path

from leapi_server.config import ServerConfig
from leapi_server.fetch import FetchPolicy
from leapi_server.netguard import AddressPolicy
from leapi_server.store import ClaimedTask, Store
from leapi_server.tempstore import TempStore, TempStoreUnavailableError, safe_basename
from leapi_server.worker import TaskJob, TaskOutcome, init_worker, process_task

log = logging.getLogger("leapi_server.dispatcher")

#: Tasks leased per worker: one running plus one queued keeps every worker busy between round trips.
QUEUE_DEPTH_PER_WORKER = 2
_IDLE_POLL_S = 1.0
#: Pause before re-queuing an image whose output could not be stored (S3 down): a little time to recover.
_PUBLISH_RETRY_DELAY_S = 2.0
#: Pause between tries of recording an outcome while the database is unreachable.
_RECORD_RETRY_DELAY_S = 1.0


def _noop() -> None:
    return None


class Dispatcher:
    """Feeds the worker pool from the store.

    :param config: the server's configuration (workers, limits, temp URL lifetime).
    :param store: where tasks are leased from and outcomes recorded.
    :param temp_store: names the output files.
    :param boot_id: this server run's id: the owner of the leases it takes.
    :param on_pipeline_finished: called (on the loop) with a pipeline id when its last task is recorded.
    """

    def __init__(
        self,
        *,
        config: ServerConfig,
        store: Store,
        temp_store: TempStore,
        boot_id: str,
        on_pipeline_finished: Callable[[int], None],
    ) -> None:
        self.config = config
        self.store = store
        self.temp_store = temp_store
        self.boot_id = boot_id
        self.on_pipeline_finished = on_pipeline_finished
        self.fetch_policy = FetchPolicy(
            address_policy=AddressPolicy(
                allow_private=config.allow_private_sources, allowed_networks=config.allowed_source_networks
            ),
            connect_timeout_s=config.fetch_connect_timeout_s,
            read_timeout_s=config.fetch_read_timeout_s,
            deadline_s=config.fetch_deadline_s,
            max_bytes=config.max_download_bytes,
            max_redirects=config.max_redirects,
        )
        self._pool: ProcessPoolExecutor | None = None
        self._wake = asyncio.Event()
        self._inflight: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._stopping = False
        #: Tasks whose worker was killed for going over ``max_image_seconds``: they fail, never re-run.
        self._overdue: set[tuple[int, int]] = set()
        #: Pools broken on purpose (to stop an overdue image): their other tasks are innocent.
        self._stopped_pools: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()
        #: Tasks held back by ``--test-finish-shuffle``: they take no worker, so they do not count as busy.
        self._held: set[tuple[int, int]] = set()

    # -- pool -----------------------------------------------------------------------------------------

    def _new_pool(self) -> ProcessPoolExecutor:
        threads = max(1, (os.cpu_count() or 1) // self.config.workers)
        # Native thread pools read these at import, before any initializer runs; spawned workers inherit
        # the environment, so set them here (an explicit user setting wins).
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
        # spawn, not fork: the API process has threads (sqlite, anyio) that fork would copy mid-flight.
        return ProcessPoolExecutor(
            max_workers=self.config.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(os.getpid(), threads),
        )

    def start(self) -> None:
        # Notes left by the workers of a previous (killed) boot describe processes that no longer exist.
        shutil.rmtree(self.config.worker_status_dir, ignore_errors=True)
        self.config.worker_status_dir.mkdir(parents=True, exist_ok=True)
        self._pool = self._new_pool()
        for _ in range(self.config.workers):  # start the processes now, not on the first image
            self._pool.submit(_noop)

    def wake(self) -> None:
        self._wake.set()

    @property
    def busy(self) -> int:
        return len(self._inflight)

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        if self._pool is not None:
            _terminate_pool(self._pool)
            self._pool = None
        if not self.store.database.exclusive:
            # Replicas: hand our leases back now, so that a rolling restart does not leave images waiting
            # for the leases to expire (alone on SQLite, the next start re-queues them anyway).
            try:
                returned = await asyncio.to_thread(self.store.tasks.release_all, boot_id=self.boot_id)
            except Exception:
                log.exception("returning leases at shutdown failed; they expire instead")
            else:
                if returned:
                    log.info("returned %d leased task(s) to the queue", returned)

    # -- loop -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            capacity = self.config.workers * QUEUE_DEPTH_PER_WORKER - (len(self._inflight) - len(self._held))
            claimed: list[ClaimedTask] = []
            if capacity > 0:
                try:
                    claimed = await asyncio.to_thread(
                        self.store.tasks.claim,
                        limit=capacity,
                        boot_id=self.boot_id,
                        lease_s=self.config.lease_s,
                    )
                except Exception:
                    log.exception("claiming tasks failed; retrying")
            for task in claimed:
                key = (task.pipeline_id, task.index)
                self._inflight[key] = asyncio.create_task(self._run_one(task), name=f"task-{key}")
            if not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=_IDLE_POLL_S)

    def _job(self, task: ClaimedTask) -> TaskJob:
        basename = safe_basename(task.url.split("?", 1)[0].split("#", 1)[0])
        return TaskJob(
            pipeline_id=task.pipeline_id,
            index=task.index,
            url=task.url,
            operations=task.operations,
            temp_dir=str(self.temp_store.root),
            key_stem=self.temp_store.key_stem(task.pipeline_id, task.index, basename),
            fetch_policy=self.fetch_policy,
            max_input_pixels=self.config.max_input_pixels,
            max_output_pixels=self.config.max_output_pixels,
            status_dir=str(self.config.worker_status_dir),
            restoration_model=self.config.restoration_model_spec,
        )

    async def _hold_for_shuffle(self, key: tuple[int, int]) -> None:
        """``--test-finish-shuffle``: hold the task back for its pipeline's seeded random delay."""
        delay = random.Random(f"finish-shuffle:{key[0]}").uniform(0, self.config.test_finish_shuffle_s)
        self._held.add(key)
        try:
            await asyncio.sleep(delay)
        finally:
            self._held.discard(key)

    async def _run_one(self, task: ClaimedTask) -> None:
        loop = asyncio.get_running_loop()
        key = (task.pipeline_id, task.index)
        finished = False
        try:
            if self.config.test_finish_shuffle_s:
                await self._hold_for_shuffle(key)
            pool = self._pool
            assert pool is not None
            try:
                outcome: TaskOutcome = await loop.run_in_executor(pool, process_task, self._job(task))
            except BrokenProcessPool:
                self._replace_pool(pool)
                if key in self._overdue:
                    # Stopped by the engine time limit: the same image would get stuck again; fail it.
                    finished = await self._complete(
                        TaskOutcome(
                            pipeline_id=task.pipeline_id,
                            index=task.index,
                            error=(
                                f"processing this image took longer than the server's limit of "
                                f"{self.config.max_image_seconds:g} s per image; it was stopped"
                            ),
                        )
                    )
                else:
                    # A worker died (OOM killer, segfault in a codec, or stopped for another image's time
                    # limit): every task in the pool is re-queued; one that keeps killing workers fails
                    # after max_task_attempts. Tasks of a pool stopped on purpose keep their attempts.
                    innocent = pool in self._stopped_pools
                    if innocent:
                        log.info(
                            "pipeline %s image %s re-queued: its pool was stopped for another image's time limit",
                            task.pipeline_id,
                            task.index,
                        )
                    else:
                        log.error(
                            "worker process died while pipeline %s image %s was in flight (attempt %s)",
                            task.pipeline_id,
                            task.index,
                            task.attempts,
                        )
                    finished = await self._record(
                        self.store.tasks.release,
                        pipeline_id=task.pipeline_id,
                        index=task.index,
                        boot_id=self.boot_id,
                        max_attempts=self.config.max_task_attempts,
                        count_attempt=not innocent,
                    )
            else:
                finished = await self._publish_and_complete(task, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recording pipeline %s image %s failed", task.pipeline_id, task.index)
        finally:
            self._inflight.pop(key, None)
            self._overdue.discard(key)
            self._wake.set()
        if finished:
            self.on_pipeline_finished(task.pipeline_id)

    async def _publish_and_complete(self, task: ClaimedTask, outcome: TaskOutcome) -> bool:
        """Upload a finished image's output, then record it; an output that cannot be stored sends the
        image back to the queue (one attempt used), and fails it once its attempts are used up."""
        if outcome.output_key is not None:
            try:
                await asyncio.to_thread(self.temp_store.publish, outcome.output_key)
            except TempStoreUnavailableError as exc:
                if task.attempts < self.config.max_task_attempts:
                    log.warning(
                        "pipeline %s image %s: %s; re-queued (attempt %s)",
                        task.pipeline_id,
                        task.index,
                        exc,
                        task.attempts,
                    )
                    await asyncio.sleep(_PUBLISH_RETRY_DELAY_S)
                    return await self._record(
                        self.store.tasks.release,
                        pipeline_id=task.pipeline_id,
                        index=task.index,
                        boot_id=self.boot_id,
                        max_attempts=self.config.max_task_attempts,
                    )
                outcome = TaskOutcome(
                    pipeline_id=task.pipeline_id,
                    index=task.index,
                    error=f"the output could not be stored after {task.attempts} attempts: {exc}",
                )
        if outcome.error:
            log.info("pipeline %s image %s failed: %s", task.pipeline_id, task.index, outcome.error)
        return await self._complete(outcome)

    async def _record(self, method: Callable[..., bool], **kwargs: object) -> bool:
        """Call a store method until the database takes it (it may be restarting); the lease stays ours
        meanwhile, kept alive by the heartbeat once the database is back."""
        while True:
            try:
                return await asyncio.to_thread(method, **kwargs)
            except Exception:
                if self._stopping:
                    raise
                log.exception("recording a task outcome failed; retrying in %g s", _RECORD_RETRY_DELAY_S)
                await asyncio.sleep(_RECORD_RETRY_DELAY_S)

    async def keep_leases(self) -> None:
        """Every third of the lease: extend this boot's leases, and re-queue the expired leases of dead
        replicas (with SQLite the start took them all back, and no other server can hold one)."""
        interval = self.config.lease_s / 3
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(
                    self.store.tasks.heartbeat, boot_id=self.boot_id, lease_s=self.config.lease_s
                )
                if not self.store.database.exclusive:
                    requeued = await asyncio.to_thread(
                        self.store.tasks.recover, max_attempts=self.config.max_task_attempts
                    )
                    if requeued:
                        log.warning("re-queued %d task(s) whose replica stopped heartbeating", requeued)
                        self._wake.set()
            except Exception:
                log.exception("renewing task leases failed; retrying")

    async def _complete(self, outcome: TaskOutcome) -> bool:
        """Record a task's outcome (done or failed); true when that finished its pipeline."""
        return await self._record(
            self.store.tasks.complete,
            pipeline_id=outcome.pipeline_id,
            index=outcome.index,
            boot_id=self.boot_id,
            input_meta=None if outcome.input is None else asdict(outcome.input),
            output_meta=None if outcome.output is None else asdict(outcome.output),
            output_key=outcome.output_key,
            output_ttl_s=self.config.temp_url_ttl_s,
            error=outcome.error,
        )

    # -- engine time limit ----------------------------------------------------------------------------

    async def watch_engine_time(self) -> None:
        """Kill any worker that has spent more than ``max_image_seconds`` on one image.

        A stuck decoder or a pathological image can hold a worker inside native code where no Python-level
        timeout reaches it; only killing the process frees it. Killing one worker breaks its pool (that is
        how ``ProcessPoolExecutor`` works), so the pool is replaced: the overdue image fails with a timeout
        error, every other image in the pool is re-queued without using up an attempt.
        """
        limit = self.config.max_image_seconds
        interval = min(1.0, max(limit / 4, 0.05))
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                notes = await asyncio.to_thread(_read_engine_notes, self.config.worker_status_dir)
            except Exception:
                log.exception("reading worker status notes failed")
                continue
            pool = self._pool
            if pool is None:
                continue
            pool_pids = set(getattr(pool, "_processes", {}) or {})  # no public API lists the workers
            # The real clock, never the store's injected one: the workers stamp their notes with it.
            now = time.time()
            for pid, key, since in notes:
                if pid not in pool_pids or key not in self._inflight or key in self._overdue:
                    continue
                if now - since <= limit:
                    continue
                log.error(
                    "pipeline %s image %s: the engine ran %.1f s, over the %g s limit; stopping worker %s "
                    "and replacing the pool",
                    key[0],
                    key[1],
                    now - since,
                    limit,
                    pid,
                )
                self._overdue.add(key)
                self._stopped_pools.add(pool)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _replace_pool(self, broken: ProcessPoolExecutor) -> None:
        if self._pool is broken and not self._stopping:
            dead = list(getattr(broken, "_processes", {}) or {})
            _terminate_pool(broken)
            for pid in dead:  # a killed worker never removed its note
                (self.config.worker_status_dir / f"{pid}.json").unlink(missing_ok=True)
            self._pool = self._new_pool()


def _read_engine_notes(folder: Path) -> list[tuple[int, tuple[int, int], float]]:
    """(worker pid, (pipeline id, index), engine start as Unix time) of every worker busy on an image."""
    notes = []
    for path in folder.glob("*.json"):
        try:
            note = json.loads(path.read_text())
            notes.append(
                (int(path.stem), (int(note["pipeline_id"]), int(note["index"])), float(note["since"]))
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # finished and removed meanwhile, or not ours
    return notes


def _terminate_pool(pool: ProcessPoolExecutor) -> None:
    processes = list(getattr(pool, "_processes", {}).values())  # no public API to stop running workers
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
