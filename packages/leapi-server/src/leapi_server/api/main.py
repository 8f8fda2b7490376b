"""The application's routes, in the order the OpenAPI document lists them."""

from __future__ import annotations

from fastapi import APIRouter

from leapi_server.api.routes import health, pipelines, temp_files, usage

api_router = APIRouter()
api_router.include_router(pipelines.router)
api_router.include_router(usage.router)
api_router.include_router(temp_files.router)
api_router.include_router(health.router)
