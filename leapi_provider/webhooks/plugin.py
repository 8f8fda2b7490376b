"""The Airflow plugin that mounts the LEAPI webhook receiver on the api-server at ``/leapi-webhooks``.

Registered through the ``airflow.plugins`` entry point of ``airflow-provider-leapi``: installing the
provider is enough, nothing goes in the plugins folder. (Not through ``get_provider_info()["plugins"]``:
Airflow loads those only with ``[core] lazy_discover_providers = False``.)

Every Airflow component loads plugins, task processes included, so this module imports nothing but the
plugin base class: the FastAPI app is built at the first request the api-server routes to it.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

#: Where the receiver is mounted on the api-server (the ``leapi_webhooks`` connection's host ends with it).
URL_PREFIX = "/leapi-webhooks"


class LazyReceiverApp:
    """An ASGI app that builds :func:`~leapi_provider.webhooks.receiver.create_app` when first called."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from leapi_provider.webhooks.receiver import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class LeapiWebhooksPlugin(AirflowPlugin):
    """Mounts the LEAPI webhook receiver (:mod:`leapi_provider.webhooks.receiver`) on the api-server."""

    name = "leapi_webhooks"
    # (AirflowPlugin declares it a plain class attribute, read from the class)
    fastapi_apps: list[Any] = [  # noqa: RUF012
        {"app": LazyReceiverApp(), "url_prefix": URL_PREFIX, "name": "LEAPI webhook receiver"}
    ]
