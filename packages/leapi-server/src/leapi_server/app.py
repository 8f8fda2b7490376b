"""The FastAPI application of ``leapi-server``: the runtime, its lifespan, and the API routers.

Routes live in ``api.routes`` (one router per resource) and only translate: authenticate, parse, call
the runtime, map its outcome to HTTP (``api.errors``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from leapi_server import __version__
from leapi_server.api.errors import install_error_handlers
from leapi_server.api.main import api_router
from leapi_server.api.middleware import IdempotencySupportHeader
from leapi_server.api.openapi import install_openapi
from leapi_server.clock import SYSTEM_CLOCK, Clock
from leapi_server.config import ServerConfig
from leapi_server.runtime import Runtime

log = logging.getLogger("leapi_server")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    runtime: Runtime = app.state.runtime
    config = runtime.config
    await runtime.start()
    log.info(
        "leapi-server ready on %s (data dir %s, %d worker process(es), %d API key(s), rate limit %s/min, "
        "monthly quota %s, private sources %s, compat %s)",
        config.listen_url,
        config.data_dir,
        config.workers,
        len(config.api_keys),
        config.rate_limit_per_minute or "unlimited",
        config.monthly_quota or "unlimited",
        "ALLOWED" if config.allow_private_sources else "refused",
        config.compat,
    )
    try:
        yield
    finally:
        await runtime.stop()


def create_app(config: ServerConfig, *, clock: Clock = SYSTEM_CLOCK, compat: str | None = None) -> FastAPI:
    """The application serving ``config``; its runtime starts and stops with the ASGI lifespan.

    :param config: the server's configuration.
    :param clock: "now" for everything time-driven (tests move it instead of sleeping).
    :param compat: overrides ``config.compat`` (``default`` or ``docs``, see ``--compat``).
    """
    if compat is not None:
        config = dataclasses.replace(config, compat=compat)
    app = FastAPI(
        title="leapi-server",
        version=__version__,
        summary="A LEAPI-compatible image enhancement server",
        lifespan=_lifespan,
        redoc_url=None,
    )
    app.state.runtime = Runtime(config=config, clock=clock)
    if not config.docs_only:  # the docs promise no Idempotency-Key, so docs mode does not advertise it
        app.add_middleware(IdempotencySupportHeader)
    install_error_handlers(app)
    app.include_router(api_router)
    install_openapi(app, config)
    return app
