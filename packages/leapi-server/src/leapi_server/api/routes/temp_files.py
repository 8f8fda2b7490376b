"""``GET /v1/tmp/{key}?expires=..&signature=..``: an output file through its signed ``tmp_url``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from leapi.constants import TMP_PATH_PREFIX
from leapi_server.api.deps import RuntimeDep
from leapi_server.api.errors import rejection_responses
from leapi_server.outcomes import Refused, TempFile

router = APIRouter()


@router.api_route(
    f"{TMP_PATH_PREFIX}{{key:path}}",
    methods=["GET", "HEAD"],
    responses={
        200: {"description": "the output image", "content": {"image/jpeg": {}, "image/png": {}}},
        **rejection_responses(403, 404),
    },
    summary="Download an output through its signed tmp_url (no API key: the signature is the credential)",
)
async def get_temp_file(
    key: str, runtime: RuntimeDep, expires: str | None = None, signature: str | None = None
) -> FileResponse:
    found = runtime.temp_file(key=key, expires=expires, signature=signature)
    if not isinstance(found, TempFile):
        raise Refused(found)
    return FileResponse(
        found.path,
        media_type=found.media_type,
        filename=found.path.name,
        headers={"Cache-Control": f"private, max-age={found.max_age_s}"},
    )
