"""``GET /v1/me/usage/``: credits used this month, the quota and the rate limit."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from leapi.constants import USAGE_PATH
from leapi.models import Usage
from leapi_server.api.deps import OwnerDep, RuntimeDep
from leapi_server.api.errors import rejection_responses

router = APIRouter()


async def get_usage(runtime: RuntimeDep, owner: OwnerDep) -> JSONResponse:
    return JSONResponse(await asyncio.to_thread(runtime.usage, owner=owner))


# The docs write the path with its slash; clients that drop it must not depend on a redirect.
for _path, _in_schema in ((USAGE_PATH, True), (USAGE_PATH.rstrip("/"), False)):
    router.add_api_route(
        _path,
        get_usage,
        methods=["GET"],
        response_model=Usage,
        responses=rejection_responses(401),
        include_in_schema=_in_schema,
        summary="Credits used this month, quota and rate limit",
        operation_id="get_usage" if _in_schema else "get_usage_no_slash",
    )
