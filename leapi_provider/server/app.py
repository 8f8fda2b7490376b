"""FastAPI application of ``leapi-server`` (skeleton; routes land next)."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from leapi_provider.server.config import ServerConfig

log = logging.getLogger("leapi_server")


def create_app(config: ServerConfig) -> FastAPI:
    app = FastAPI(title="leapi-server")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve(config: ServerConfig, *, log_level: str = "info") -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=log_level)
