"""``GET /healthz`` (extension): liveness, no API key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from leapi.constants import HEALTH_PATH
from leapi_server.api.deps import RuntimeDep

router = APIRouter()

#: The extensions a client may rely on (packages/leapi-server/README.md, "Extensions").
EXTENSIONS = ("idempotency-key", "signed-webhooks", "result-error", "webhook-deliveries")


@router.get(HEALTH_PATH, summary="Extension: liveness (no API key)")
async def healthz(runtime: RuntimeDep) -> dict[str, Any]:
    extensions = [] if runtime.config.docs_only else list(EXTENSIONS)
    return {"status": "ok", "busy_tasks": runtime.dispatcher.busy, "extensions": extensions}
