"""Sensor that waits for one or many LEAPI pipelines to finish."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowSensorTimeout

from leapi.errors import LeapiError, LeapiNotFoundError, LeapiPipelineFailedError
from leapi.models import PipelineStatus
from leapi_provider.exceptions import fail_on_permanent_errors
from leapi_provider.hooks.leapi import LeapiHook
from leapi_provider.triggers.leapi import (
    EVENT_SUCCESS,
    EVENT_TIMEOUT,
    LeapiPipelineTrigger,
    earliest_resume,
    validate_pipeline_event,
)
from leapi_provider.utils import coerce_pipeline_ids

if TYPE_CHECKING:
    from airflow.sdk import Context


def wait_summary(pipeline_ids: list[int], statuses: dict[int, str], failed: list[int]) -> dict[str, Any]:
    """The sensor's XCom: ``{"pipeline_ids", "counts", "failed_ids"}`` (bounded by the ids watched)."""
    counts = {s.value: 0 for s in PipelineStatus}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    return {"pipeline_ids": pipeline_ids, "counts": counts, "failed_ids": failed}


class LeapiPipelineSensor(BaseSensorOperator):
    """Wait until every given pipeline is DONE or ERROR.

    ``poke()`` polls in the worker (``mode="poke"`` or ``"reschedule"``); with ``deferrable=True`` one
    :class:`~leapi_provider.triggers.leapi.LeapiPipelineTrigger` waits for all the ids in the triggerer.
    Past ``timeout`` the sensor fails with ``AirflowSensorTimeout``, which Airflow does not retry.

    :param pipeline_ids: one id or many (templated; ``"7"``, ``"[7, 8]"`` and lists are accepted).
    :param fail_on_error: fail when a pipeline ended in ERROR (default). With ``False`` the sensor succeeds
        once all are terminal and reports the failed ids in its XCom.
    :param deferrable: wait in the triggerer (default ``[operators] default_deferrable``).
    :param leapi_conn_id: the LEAPI connection.
    :returns: ``{"pipeline_ids", "counts": {"DONE", "ERROR", "PROCESSING"}, "failed_ids"}``.
    """

    template_fields: Sequence[str] = ("pipeline_ids",)
    ui_color = "#c7e9f1"

    def __init__(
        self,
        *,
        pipeline_ids: int | str | Sequence[int | str],
        fail_on_error: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        leapi_conn_id: str = LeapiHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline_ids = pipeline_ids
        self.fail_on_error = fail_on_error
        self.deferrable = deferrable
        self.leapi_conn_id = leapi_conn_id
        self._statuses: dict[int, str] = {}
        self._errors: dict[int, Any] = {}

    @cached_property
    def hook(self) -> LeapiHook:
        return LeapiHook(self.leapi_conn_id)

    @property
    def ids(self) -> list[int]:
        return coerce_pipeline_ids(self.pipeline_ids)

    @fail_on_permanent_errors()
    def poke(self, context: Context) -> PokeReturnValue | bool:
        ids = self.ids
        for pipeline_id in ids:
            if self._statuses.get(pipeline_id) in (PipelineStatus.DONE.value, PipelineStatus.ERROR.value):
                continue  # terminal states never change: poll only what is still running
            try:
                pipeline = self.hook.get_pipeline(pipeline_id)
            except LeapiNotFoundError:
                self._statuses[pipeline_id] = PipelineStatus.ERROR.value
                self._errors[pipeline_id] = (
                    "pipeline not found (unknown id, or it belongs to another API key)"
                )
                continue
            status = pipeline.status or PipelineStatus.PROCESSING
            self._statuses[pipeline_id] = status.value
            if status is PipelineStatus.ERROR:
                self._errors[pipeline_id] = pipeline.errors or pipeline.error or "ERROR (no details)"
        pending = [i for i in ids if self._statuses.get(i) == PipelineStatus.PROCESSING.value]
        self.log.info("LEAPI: %d of %d pipeline(s) finished", len(ids) - len(pending), len(ids))
        if pending:
            return False
        failed = [i for i in ids if i in self._errors]
        if failed and self.fail_on_error:
            raise LeapiPipelineFailedError(
                f"{len(failed)} LEAPI pipeline(s) ended in ERROR: "
                + "; ".join(f"{i}: {self._errors[i]}" for i in failed[:5]),
                pipeline_ids=failed,
                errors={i: self._errors[i] for i in failed},
            )
        return PokeReturnValue(is_done=True, xcom_value=wait_summary(ids, self._statuses, failed))

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        # Already finished (e.g. a re-run): no need to wake the triggerer.
        done = self.poke(context)
        if isinstance(done, PokeReturnValue) and done.is_done:
            return done.xcom_value
        now = time.time()
        self.defer(
            trigger=LeapiPipelineTrigger(
                pipeline_ids=self.ids,
                end_time=now + self.timeout,
                leapi_conn_id=self.leapi_conn_id,
                poll_interval=self.poke_interval,
                not_before=earliest_resume(now),
                started_at=now,
            ),
            method_name="execute_complete",
            # The trigger's own end_time fires first; this is the triggerer-side safety net.
            timeout=timedelta(seconds=self.timeout + self.poke_interval + 60),
        )

    @fail_on_permanent_errors()
    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger: succeed, or raise for a failure or the (non-retried) timeout."""
        event = validate_pipeline_event(event)
        if event["status"] == EVENT_TIMEOUT:
            raise AirflowSensorTimeout(
                f"LEAPI sensor timed out after {self.timeout:.0f}s: {event['message']}"
            )
        if event["status"] != EVENT_SUCCESS:
            if event["pending_ids"]:
                raise LeapiError(f"Waiting for LEAPI pipelines failed: {event['message']}")
            if self.fail_on_error:
                raise LeapiPipelineFailedError(
                    f"LEAPI: {event['message']}", pipeline_ids=list(event["failed_ids"])
                )
        statuses = {
            pid: (PipelineStatus.ERROR.value if pid in event["failed_ids"] else PipelineStatus.DONE.value)
            for pid in event["pipeline_ids"]
        }
        return wait_summary(list(event["pipeline_ids"]), statuses, list(event["failed_ids"]))
