"""Operators for the Let's Enhance image API (LEAPI): submit a pipeline (and wait), download its results."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import XCom
from airflow.sdk import BaseOperator, BaseOperatorLink, ObjectStoragePath, ResumableJobMixin, conf
from pydantic import BaseModel, ValidationError

from leapi.errors import LeapiError, LeapiNotFoundError, LeapiPipelineFailedError, LeapiWaitTimeoutError
from leapi.idempotency import derive_idempotency_key
from leapi.models import (
    OPERATION_ADAPTER,
    Pipeline,
    PipelineRequest,
    PipelineStatus,
    validation_reason,
)
from leapi.results import result_files
from leapi_provider.exceptions import fail_on_permanent_errors
from leapi_provider.hooks.leapi import LeapiHook
from leapi_provider.results import file_record, raise_for_failed_results, spooled_download
from leapi_provider.triggers.leapi import (
    EVENT_SUCCESS,
    EVENT_TIMEOUT,
    LeapiPipelineTrigger,
    earliest_resume,
    validate_pipeline_event,
)
from leapi_provider.utils import coerce_pipeline_ids

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

#: XCom key of the submitted pipeline's id (pushed before waiting, so a failed wait still records it).
XCOM_PIPELINE_ID_KEY = "pipeline_id"
#: XCom key of the pipeline's API URL (what the task's "LEAPI pipeline" extra link opens).
XCOM_PIPELINE_URL_KEY = "pipeline_url"
#: XCom key of the per-file details of a download/transfer: ``[{uri, sha256, bytes, width, height, ...}]``.
XCOM_FILES_KEY = "files"
#: Task state store key holding the pipeline id across task retries (never rename: in-flight retries read it).
STATE_PIPELINE_ID_KEY = "leapi_pipeline_id"

DEFAULT_WAIT_TIMEOUT_S = 24 * 60 * 60.0
DEFAULT_POLL_INTERVAL_S = 10.0
#: With webhooks the polls are a fallback: at least this far apart.
WEBHOOK_FALLBACK_POLL_INTERVAL_S = 60.0
_COPY_CHUNK_BYTES = 1024 * 1024


def deferral_timeout(end_time: float, poll_interval: float) -> timedelta:
    """The ``timeout`` of a deferral whose trigger ends itself at ``end_time``: a backstop a little later,
    so that the trigger's own ``timeout`` event (with its message) normally wins."""
    return timedelta(seconds=max(end_time - time.time(), 0.0) + poll_interval + 60)


class LeapiPipelineLink(BaseOperatorLink):
    """Extra link to the submitted pipeline's API resource (``GET /v1/pipeline/{id}``; needs the API key)."""

    name = "LEAPI pipeline"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return XCom.get_value(key=XCOM_PIPELINE_URL_KEY, ti_key=ti_key) or ""


def _literal(value: Any) -> Any:
    """A list/dict a template rendered as text (JSON or Python repr) back into the object."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            try:
                return ast.literal_eval(value)
            except (ValueError, SyntaxError) as exc:
                raise ValueError(f"cannot read {value[:80]!r} as a list or mapping") from exc
    return value


def _as_url_list(value: Any) -> list[str]:
    value = _literal(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"source_urls must be a URL or a list of URLs, got {value!r}")


def _operation_dicts(operations: Any) -> Any:
    """Operations as plain dicts (models dumped), so the operator holds JSON-able, templatable data."""
    if isinstance(operations, BaseModel):
        operations = [operations]
    if isinstance(operations, (list, tuple)):
        return [
            op.model_dump(mode="json", exclude_none=True, by_alias=True) if isinstance(op, BaseModel) else op
            for op in operations
        ]
    return operations


def pipeline_summary(pipeline: Pipeline, pipeline_url: str | None = None) -> dict[str, Any]:
    """The small XCom summary of a pipeline: id, status and counts, never the results list."""
    status = pipeline.status or PipelineStatus.PROCESSING
    succeeded = sum(result.succeeded for result in pipeline.results)
    images = len(pipeline.source_urls) or len(pipeline.results)
    return {
        "pipeline_id": pipeline.id,
        "status": status.value,
        "images": images,
        "succeeded": succeeded,
        "failed": (images - succeeded) if status.is_terminal() else 0,
        "pipeline_url": pipeline_url,
    }


class LeapiSubmitPipelineOperator(ResumableJobMixin, BaseOperator):
    """Submit one LEAPI pipeline (one or many source URLs, one preset operation) and optionally wait for it.

    Retry-safe: the pipeline id is recorded in the task state store (and XCom ``pipeline_id``, and the extra
    link) before any waiting, so a retried task reconnects to its pipeline instead of paying for a second
    one; a pipeline that ended in ERROR is resubmitted by the retry. Each submit also carries an
    ``Idempotency-Key`` derived from the task instance (not the try) and the request, which closes the gap
    between "the API accepted" and "the id was recorded" on servers that support it (``leapi-server``).

    :param source_urls: the image URL(s) to enhance (templated). Several URLs make one pipeline, one credit each.
    :param operations: the operations (templated): preset models or their dict form, validated once
        rendered, before anything is submitted (an error names the field).
    :param notify_url: webhook URL LEAPI calls when the pipeline finishes (templated).
    :param webhook_conn_id: opt-in webhook-driven wait: the ``leapi_webhooks`` connection of the receiver the
        provider mounts on the api-server. The pipeline's ``notify_url`` then points at it (so not together
        with ``notify_url``), and the deferred wait wakes on the webhook instead of polling; polls go on as a
        fallback, at least ``WEBHOOK_FALLBACK_POLL_INTERVAL_S`` apart. See docs/provider.md, "Webhooks".
    :param wait_for_completion: wait until DONE/ERROR; fail with the pipeline's errors on ERROR.
    :param deferrable: wait in the triggerer instead of a worker slot (default ``[operators]
        default_deferrable``).
    :param poll_interval: longest gap between status polls, in seconds (the first polls come sooner).
    :param timeout: how long to wait, in seconds; past it the task fails (a retry reconnects).
    :param leapi_conn_id: the LEAPI connection.
    :param durable: record the pipeline id in the task state store to make retries reconnect (default True).
    :returns: ``{"pipeline_id", "status", "images", "succeeded", "failed", "pipeline_url"}``.
    """

    template_fields: Sequence[str] = ("source_urls", "operations", "notify_url")
    template_fields_renderers: ClassVar[dict[str, str]] = {"operations": "json", "source_urls": "json"}
    operator_extra_links = (LeapiPipelineLink(),)
    external_id_key = STATE_PIPELINE_ID_KEY
    ui_color = "#c7e9f1"

    def __init__(
        self,
        *,
        source_urls: str | Sequence[str],
        operations: Sequence[BaseModel | dict[str, Any]] | BaseModel | str,
        notify_url: str | None = None,
        webhook_conn_id: str | None = None,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
        timeout: float = DEFAULT_WAIT_TIMEOUT_S,
        leapi_conn_id: str = LeapiHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source_urls = source_urls
        self.operations = operations
        self.notify_url = notify_url
        self.webhook_conn_id = webhook_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.leapi_conn_id = leapi_conn_id
        self._final_pipeline: Pipeline | None = None
        #: The pipeline this task submitted or reconnected to (its lineage output).
        self._pipeline_id: int | None = None

    @cached_property
    def hook(self) -> LeapiHook:
        return LeapiHook(self.leapi_conn_id)

    def build_request(self) -> PipelineRequest:
        """The pipeline request from the rendered arguments, checked before anything is submitted.

        :raises ValueError: naming the bad field (e.g. ``operations[0] is invalid: restoration_level: ...``).
        """
        operations = _operation_dicts(_literal(self.operations))
        if not isinstance(operations, list) or not operations:
            raise ValueError(f"{self.task_id}: operations must be a non-empty list, got {operations!r:.200}")
        for index, operation in enumerate(operations):
            try:
                OPERATION_ADAPTER.validate_python(operation)
            except ValidationError as exc:
                raise ValueError(
                    f"{self.task_id}: operations[{index}] is invalid: {validation_reason(exc)}"
                ) from exc
        try:
            return PipelineRequest.build(
                _as_url_list(self.source_urls), operations, notify_url=self.notify_url or None
            )
        except ValidationError as exc:
            raise ValueError(f"{self.task_id}: invalid pipeline request: {validation_reason(exc)}") from exc

    # -- ResumableJobMixin ------------------------------------------------------------------------------

    @fail_on_permanent_errors()
    def execute(self, context: Context) -> dict[str, Any]:
        return self.execute_resumable(context)

    def _webhook_channel(self, context: Context) -> str:
        from leapi_provider.webhooks.tokens import channel_for_task

        ti = context["ti"]
        return channel_for_task(
            ti.dag_id, ti.run_id, ti.task_id, -1 if ti.map_index is None else ti.map_index
        )

    def submit_job(self, context: Context) -> int:
        if self.notify_url and self.webhook_conn_id:
            raise ValueError(f"{self.task_id}: give notify_url or webhook_conn_id, not both")
        if self.webhook_conn_id:
            from leapi_provider.webhooks.hook import LeapiWebhooksHook

            # The same URL on every try: the idempotency key below covers it.
            settings = LeapiWebhooksHook(self.webhook_conn_id).get_settings()
            self.notify_url = settings.notify_url(self._webhook_channel(context))
        request = self.build_request()
        store = context.get("task_state_store")
        # A retry that resubmits after an ERROR must not reuse the failed pipeline's key: fold it in.
        previous = store.get(self.external_id_key) if store is not None else None
        ti = context["ti"]
        key = derive_idempotency_key(request, ti.dag_id, ti.task_id, ti.run_id, ti.map_index, previous or "")
        pipeline_id = self.hook.submit_pipeline(request, idempotency_key=key)
        self._record_pipeline(context, pipeline_id)
        return pipeline_id

    def get_job_status(self, external_id: Any, context: Context) -> str:
        try:
            pipeline = self.hook.get_pipeline(int(external_id))
        except LeapiNotFoundError:
            self.log.warning("Recorded pipeline %s is unknown to the API; submitting a new one", external_id)
            return "NOT_FOUND"
        if pipeline.status is not None and pipeline.status.is_terminal():
            self._final_pipeline = pipeline
        return (pipeline.status or PipelineStatus.PROCESSING).value

    def is_job_active(self, status: str) -> bool:
        return status == PipelineStatus.PROCESSING.value

    def is_job_succeeded(self, status: str) -> bool:
        return status == PipelineStatus.DONE.value

    # (execute_resumable returns this method's value, though the mixin annotates it None)
    def poll_until_complete(self, external_id: Any, context: Context) -> dict[str, Any]:  # type: ignore[override]
        pipeline_id = int(external_id)
        # A retry starts with empty XComs: record the id again when reconnecting.
        self._record_pipeline(context, pipeline_id)
        if not self.wait_for_completion:
            return self.get_job_result(pipeline_id, context)
        if self.deferrable:
            pipeline = self.hook.get_pipeline(pipeline_id)
            if pipeline.status is None or not pipeline.status.is_terminal():
                self.log.info(
                    "Deferring until pipeline %s finishes (timeout %.0fs)", pipeline_id, self.timeout
                )
                now = time.time()
                self.defer(
                    trigger=LeapiPipelineTrigger(
                        pipeline_ids=[pipeline_id],
                        end_time=now + self.timeout,
                        leapi_conn_id=self.leapi_conn_id,
                        not_before=earliest_resume(now),
                        started_at=now,
                        **self._wait_kwargs(context),
                    ),
                    method_name="execute_complete",
                    timeout=deferral_timeout(now + self.timeout, self.poll_interval),
                )
            self._final_pipeline = pipeline
        else:
            self._wait_in_worker(pipeline_id)
        return self.get_job_result(pipeline_id, context)

    def get_job_result(self, external_id: Any, context: Context) -> dict[str, Any]:
        pipeline_id = int(external_id)
        self._pipeline_id = pipeline_id
        pipeline = self._final_pipeline
        if pipeline is None or pipeline.id != pipeline_id:
            pipeline = self.hook.get_pipeline(pipeline_id)
        if pipeline.status is PipelineStatus.ERROR and self.wait_for_completion:
            raise LeapiPipelineFailedError(
                f"LEAPI pipeline {pipeline_id} ended in ERROR: {pipeline.errors or pipeline.error or 'no details'}",
                pipeline_ids=[pipeline_id],
                errors={pipeline_id: pipeline.errors or pipeline.error},
            )
        return pipeline_summary(pipeline, self.hook.pipeline_url(pipeline_id))

    # -- waiting ----------------------------------------------------------------------------------------

    def _wait_kwargs(self, context: Context) -> dict[str, Any]:
        """The trigger's polling (and, with webhooks, hint) arguments."""
        if not self.webhook_conn_id:
            return {"poll_interval": self.poll_interval}
        from leapi_provider.webhooks.hints import WebhookHintSource

        hints = WebhookHintSource(channel=self._webhook_channel(context), conn_id=self.webhook_conn_id)
        return {
            "poll_interval": max(self.poll_interval, WEBHOOK_FALLBACK_POLL_INTERVAL_S),
            "webhook_hints": hints.serialize(),
        }

    def _wait_in_worker(self, pipeline_id: int) -> None:
        try:
            (pipeline,) = self.hook.wait_for_pipelines(
                [pipeline_id], timeout=self.timeout, poll_interval=self.poll_interval
            )
        except LeapiWaitTimeoutError as exc:
            raise LeapiWaitTimeoutError(
                f"LEAPI pipeline {pipeline_id} still PROCESSING after {self.timeout:.0f}s; a retry of this "
                "task reconnects to it",
                pending_ids=[pipeline_id],
            ) from exc
        self._final_pipeline = pipeline
        self.log.info("Pipeline %s is %s", pipeline_id, (pipeline.status or PipelineStatus.PROCESSING).value)

    @fail_on_permanent_errors()
    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger: validate its event, then return the summary or raise."""
        event = validate_pipeline_event(event)
        pipeline_id = int(event["pipeline_ids"][0])
        if event["status"] == EVENT_TIMEOUT:
            raise LeapiWaitTimeoutError(
                f"LEAPI pipeline {pipeline_id}: {event['message']}; a retry of this task reconnects to it"
            )
        if event["status"] != EVENT_SUCCESS and event["pending_ids"]:
            raise LeapiError(f"Waiting for LEAPI pipeline {pipeline_id} failed: {event['message']}")
        self._final_pipeline = None
        return self.get_job_result(pipeline_id, context)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """The sources (the folders that hold them) in; the LEAPI pipeline's results out."""
        from leapi_provider.lineage import folder_datasets, operator_lineage, pipeline_dataset

        outputs = []
        if self._pipeline_id is not None:
            outputs.append(pipeline_dataset(self.hook.pipeline_url(self._pipeline_id), self._pipeline_id))
        return operator_lineage(inputs=folder_datasets(_as_url_list(self.source_urls)), outputs=outputs)

    def _record_pipeline(self, context: Context, pipeline_id: int) -> None:
        self._pipeline_id = pipeline_id
        ti = context["ti"]
        ti.xcom_push(key=XCOM_PIPELINE_ID_KEY, value=pipeline_id)
        ti.xcom_push(key=XCOM_PIPELINE_URL_KEY, value=self.hook.pipeline_url(pipeline_id))


class LeapiDownloadResultOperator(BaseOperator):
    """Copy every result of a DONE pipeline to a folder on any object storage (``file://``, ``s3://``, ...).

    Each result is streamed to a spooled temp file (never whole in memory), verified (complete, decodable,
    the size LEAPI reported) and only then written to ``destination / file_name``, with a deterministic name
    ``{source basename}__{preset}__{pipeline id}[-{index}].{ext}``. The pipeline is read right before the
    copy so that its temp URLs are fresh; an expired URL fails with the pipeline id and the expiry.

    :param pipeline_id: the pipeline (templated; e.g. ``"{{ ti.xcom_pull('submit', key='pipeline_id') }}"``).
    :param destination: the folder, an ``ObjectStoragePath`` or its URL (templated).
    :param destination_conn_id: connection for the destination's storage (e.g. ``aws_default`` for s3://).
    :param overwrite: rewrite files that already exist; by default they are kept (names are deterministic,
        so a retried task does not download them again).
    :param allow_partial: succeed when some images of the pipeline failed (they are logged); default fails
        after copying the good ones.
    :param leapi_conn_id: the LEAPI connection.
    :returns: the URIs written (one per result; XCom ``files`` has their sha256, bytes and size).
    """

    template_fields: Sequence[str] = ("pipeline_id", "destination")

    def __init__(
        self,
        *,
        pipeline_id: int | str,
        destination: str | ObjectStoragePath,
        destination_conn_id: str | None = None,
        overwrite: bool = False,
        allow_partial: bool = False,
        leapi_conn_id: str = LeapiHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline_id = pipeline_id
        self.destination = destination
        self.destination_conn_id = destination_conn_id
        self.overwrite = overwrite
        self.allow_partial = allow_partial
        self.leapi_conn_id = leapi_conn_id
        self._pipeline_url: str | None = None

    def _destination(self) -> ObjectStoragePath:
        if isinstance(self.destination, ObjectStoragePath):
            return self.destination
        return ObjectStoragePath(str(self.destination), conn_id=self.destination_conn_id)

    @fail_on_permanent_errors()
    def execute(self, context: Context) -> list[str]:
        (pipeline_id,) = coerce_pipeline_ids(self.pipeline_id)[:1]
        folder = self._destination()
        records: list[dict[str, Any]] = []
        with LeapiHook(self.leapi_conn_id) as hook:
            self._pipeline_url = hook.pipeline_url(pipeline_id)
            files, failed = result_files(hook.get_pipeline(pipeline_id))
            if folder.protocol in ("file", "local", ""):
                folder.mkdir(parents=True, exist_ok=True)
            for result in files:
                target = folder / result.file_name
                if not self.overwrite and target.exists():
                    self.log.info("%s exists; keeping it (overwrite=False)", target)
                    records.append(file_record(str(target), None, result, **_existing_file_facts(target)))
                    continue
                with spooled_download(hook, result) as (verified, spool):
                    _write(target, spool)
                self.log.info(
                    "Wrote %s (%d bytes, %dx%d)", target, verified.byte_count, verified.width, verified.height
                )
                records.append(file_record(str(target), verified, result))
        context["ti"].xcom_push(key=XCOM_FILES_KEY, value=records)
        raise_for_failed_results(pipeline_id, failed, allow_partial=self.allow_partial, log=self.log)
        return [record["uri"] for record in records]

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """The LEAPI pipeline's results in; the destination folder out."""
        from leapi_provider.lineage import dataset_of, operator_lineage, pipeline_dataset

        (pipeline_id,) = coerce_pipeline_ids(self.pipeline_id)[:1]
        inputs = [pipeline_dataset(self._pipeline_url, pipeline_id)] if self._pipeline_url else []
        return operator_lineage(inputs=inputs, outputs=[dataset_of(str(self._destination()))])


def _existing_file_facts(target: ObjectStoragePath) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with target.open("rb") as existing:
        while chunk := existing.read(_COPY_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def _write(target: ObjectStoragePath, source: Any) -> None:
    """Copy ``source`` to ``target``; on local disks through a temp name, so no half file is ever visible."""
    if target.protocol in ("file", "local", ""):
        partial = target.parent / f".{target.name}.partial"
        with partial.open("wb") as out:
            shutil.copyfileobj(source, out, _COPY_CHUNK_BYTES)
        partial.rename(target)
    else:
        # Object stores publish an object only when its upload completes.
        with target.open("wb") as out:
            shutil.copyfileobj(source, out, _COPY_CHUNK_BYTES)
