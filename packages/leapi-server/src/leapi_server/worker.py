"""The work of one image, run in a worker process: fetch the source, apply the operations in order through
the engine, write the output atomically under the temp store.

Everything here is picklable plain data in, plain data out; the API process never touches pixels.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leapi_server.engine.model_spec import ExternalModelSpec
from leapi_server.fetch import FetchError, FetchPolicy, fetch_image

log = logging.getLogger("leapi_server.worker")

#: Added to the worker processes' nice value (lower CPU priority than the API process).
WORKER_NICENESS = 10


@dataclass(frozen=True)
class TaskJob:
    """One source URL of one pipeline, as sent to a worker."""

    pipeline_id: int
    index: int
    url: str
    operations: tuple[dict[str, Any], ...]
    #: Where the output goes: ``<temp_dir>/<key_stem>.<ext>``; the stem is deterministic per task, so a
    #: task re-run after a crash overwrites its own earlier file instead of leaving an orphan.
    temp_dir: str
    key_stem: str
    fetch_policy: FetchPolicy
    max_input_pixels: int
    max_output_pixels: int
    #: Folder where the worker notes (``<pid>.json``) which image it is enhancing since when, so that the
    #: dispatcher can stop a worker stuck on one image (``--max-image-seconds``); empty: not noted.
    status_dir: str = ""
    #: The user's restoration model (``--restoration-model``); ``None``: the built-in one.
    restoration_model: ExternalModelSpec | None = None


@dataclass(frozen=True)
class ImageMeta:
    format: str
    mime: str
    ext: str
    width: int
    height: int
    interpret: str | None
    size_bytes: int


@dataclass(frozen=True)
class TaskOutcome:
    """``error`` set: the image failed (user-facing message). Otherwise ``output_key`` is the s3-style key
    of the written file relative to the temp store."""

    pipeline_id: int
    index: int
    input: ImageMeta | None = None
    output: ImageMeta | None = None
    output_key: str | None = None
    error: str | None = None
    seconds: float = 0.0


def init_worker(parent_pid: int, threads_per_worker: int) -> None:
    """Worker process initializer: bound OpenCV's thread pool and die with the server.

    Each worker gets its share of the cores (workers x threads <= cores), so N workers don't
    oversubscribe N cores with N x N threads (OMP/BLAS variables are set by the dispatcher).
    """
    # Image work yields the CPU to the API process: polls and submits stay fast while the pool is saturated.
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    try:
        import cv2

        cv2.setNumThreads(threads_per_worker)
    except ImportError:  # pragma: no cover - the server extra ships OpenCV
        pass
    import leapi_server.engine.pipeline  # noqa: F401 - import once here, not in the first task

    def watch_parent() -> None:
        # A SIGKILLed server cannot stop its pool; orphaned workers must not keep writing files.
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()


def process_task(job: TaskJob) -> TaskOutcome:
    """Fetch + enhance + store one image. Never raises for a bad image: the outcome carries the error."""
    started = time.monotonic()
    try:
        return _process_safely(job, started)
    finally:
        _clear_engine_status(job)


def _process_safely(job: TaskJob, started: float) -> TaskOutcome:
    try:
        return _process(job, started)
    except FetchError as exc:
        return TaskOutcome(job.pipeline_id, job.index, error=str(exc), seconds=time.monotonic() - started)
    except MemoryError:
        return TaskOutcome(
            job.pipeline_id,
            job.index,
            error="the image needs more memory than this server can give it",
            seconds=time.monotonic() - started,
        )
    except Exception as exc:  # noqa: BLE001 - one image must never take down its pipeline
        from leapi_server.engine import EngineError

        if isinstance(exc, EngineError):
            message = str(exc)
        else:
            log.error(
                "internal error on pipeline %s image %s:\n%s",
                job.pipeline_id,
                job.index,
                traceback.format_exc(),
            )
            message = f"internal error while processing this image ({type(exc).__name__})"
        return TaskOutcome(job.pipeline_id, job.index, error=message, seconds=time.monotonic() - started)


def _process(job: TaskJob, started: float) -> TaskOutcome:
    from leapi.models import OPERATION_ADAPTER
    from leapi_server.engine import enhance
    from leapi_server.engine.external import load_external_model

    model_choice = (
        {} if job.restoration_model is None else {"model": load_external_model(job.restoration_model)}
    )
    data, _sniffed = fetch_image(job.url, job.fetch_policy)
    _note_engine_started(job)
    first_input = None
    result = None
    current = data
    for raw in job.operations:
        result = enhance(
            current,
            OPERATION_ADAPTER.validate_python(raw),
            max_input_pixels=job.max_input_pixels,
            max_output_pixels=job.max_output_pixels,
            **model_choice,
        )
        if first_input is None:
            first_input = _meta(result.input, len(data))
        current = result.data
    assert result is not None and first_input is not None  # operations has min_length=1
    output = _meta(result.output, len(result.data))
    key = f"{job.key_stem}.{output.ext}"
    _write_atomically(Path(job.temp_dir) / key, result.data)
    return TaskOutcome(
        job.pipeline_id,
        job.index,
        input=first_input,
        output=output,
        output_key=key,
        seconds=time.monotonic() - started,
    )


def _engine_status_path(job: TaskJob) -> Path:
    return Path(job.status_dir) / f"{os.getpid()}.json"


def _note_engine_started(job: TaskJob) -> None:
    """Tell the dispatcher this worker is enhancing this image from now on (wall clock, not monotonic:
    another process reads it). Written atomically: the reader never sees half a note."""
    if not job.status_dir:
        return
    path = _engine_status_path(job)
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(json.dumps({"pipeline_id": job.pipeline_id, "index": job.index, "since": time.time()}))
    os.replace(partial, path)


def _clear_engine_status(job: TaskJob) -> None:
    if job.status_dir:
        with contextlib.suppress(OSError):
            _engine_status_path(job).unlink(missing_ok=True)


def _meta(info: Any, size_bytes: int) -> ImageMeta:
    return ImageMeta(
        format=info.format,
        mime=info.mime,
        ext=info.ext,
        width=info.width,
        height=info.height,
        interpret=info.interpret,
        size_bytes=size_bytes,
    )


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part-{os.getpid()}")
    with open(partial, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, path)
