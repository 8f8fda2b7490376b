"""The AssetWatcher trigger of event-driven feed runs: the Amazon provider's ``SqsSensorTrigger``, imported
where it runs.

An AssetWatcher needs its trigger *instance* when the DAG file is parsed, and importing
``airflow.providers.amazon.aws.triggers.sqs`` there costs boto3 and the AWS hook stack (seconds on a busy
dag-processor, at every parse). This trigger holds the SQS trigger's kwargs and builds it in the triggerer,
then yields exactly its events (``{"status": "success", "message_batch": [...]}``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


class SqsQueueWatchTrigger(BaseEventTrigger):
    """``SqsSensorTrigger(**sqs_trigger_kwargs)``, built in the triggerer.

    :param sqs_trigger_kwargs: the ``SqsSensorTrigger`` arguments (``sqs_queue``, ``aws_conn_id``,
        ``wait_time_seconds``, ...), JSON-able.
    """

    def __init__(self, *, sqs_trigger_kwargs: Mapping[str, Any]) -> None:
        super().__init__()
        self.sqs_trigger_kwargs = dict(sqs_trigger_kwargs)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"sqs_trigger_kwargs": self.sqs_trigger_kwargs},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger

        inner = SqsSensorTrigger(**self.sqs_trigger_kwargs)
        async for event in inner.run():
            yield event
