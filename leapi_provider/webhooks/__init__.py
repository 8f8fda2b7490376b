"""LEAPI webhooks as wake-up hints for deferred waits (opt-in, see docs/provider.md "Webhooks").

* :mod:`~.tokens`: a task instance's channel, its secret URL token and ``notify_url`` (stdlib only);
* :mod:`~.hook`: the ``leapi_webhooks`` connection (receiver URL, secrets, Redis);
* :mod:`~.receiver` and :mod:`~.plugin`: the FastAPI receiver the provider mounts on the api-server;
* :mod:`~.hints`: the Redis hand-off: :class:`~.hints.HintPublisher` (receiver) and
  :class:`~.hints.WebhookHintSource` (trigger: ``await source.wait_for_hints(timeout) -> set[int]``).

This package imports nothing heavy: DAG files and operators import it at parse time.
"""

from __future__ import annotations

from leapi_provider.webhooks.tokens import channel_for_task, channel_token, notify_url

__all__ = ["channel_for_task", "channel_token", "notify_url"]
