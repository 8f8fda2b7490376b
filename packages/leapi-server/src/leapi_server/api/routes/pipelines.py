"""``POST /v1/pipeline``, ``GET /v1/pipeline/{id}`` and (extension) ``GET /v1/pipeline/{id}/webhooks``."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from leapi.constants import IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_REPLAY_HEADER, PIPELINE_PATH
from leapi.models import PipelineEnvelope, PipelineRequest, SubmitResponse, validation_reason
from leapi_server.api.deps import OwnerDep, RuntimeDep
from leapi_server.api.errors import refusal_response, rejection_responses
from leapi_server.outcomes import Accepted, NotFound, Refused, Rejected, RejectionKind

router = APIRouter()

_IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")

#: The request body and the Idempotency-Key header are read by hand (size limit first, one REJECTED
#: reason per field), so FastAPI cannot infer them: they are declared here for the OpenAPI document.
_SUBMIT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PipelineRequest"}}},
    },
    "parameters": [
        {
            "name": IDEMPOTENCY_KEY_HEADER,
            "in": "header",
            "required": False,
            "description": "Extension: replays of the same key (same API key, 24 h) return the original "
            "ACCEPTED answer without a new pipeline or charge; with a different body they are REJECTED.",
            "schema": {"type": "string", "pattern": _IDEMPOTENCY_KEY_RE.pattern},
        }
    ],
}


async def submit_pipeline(request: Request, runtime: RuntimeDep, owner: OwnerDep) -> JSONResponse:
    docs_only = runtime.config.docs_only
    limited = runtime.rate_limit(owner)  # before reading the body: invalid requests count too
    if limited is not None:
        return refusal_response(limited, docs_only=docs_only)
    body = await _read_limited(request, runtime.config.max_request_bytes)
    pipeline_request = _parse_pipeline_request(body)
    # (--compat docs: the header is an extension the docs do not promise, so it is ignored)
    idempotency_key = None if docs_only else request.headers.get(IDEMPOTENCY_KEY_HEADER)
    if idempotency_key is not None and not _IDEMPOTENCY_KEY_RE.match(idempotency_key):
        raise Refused(Rejected(reason=f"{IDEMPOTENCY_KEY_HEADER}: must be 1 to 255 visible ASCII characters"))
    outcome = await asyncio.to_thread(
        runtime.submit, owner=owner, request=pipeline_request, idempotency_key=idempotency_key
    )
    if not isinstance(outcome, Accepted):
        return refusal_response(outcome, docs_only=docs_only)
    runtime.dispatcher.wake()
    headers = {IDEMPOTENT_REPLAY_HEADER: "true"} if outcome.replayed else {}
    return JSONResponse(outcome.body, headers=headers)


# The docs write both /v1/pipeline and /v1/pipeline/ (base URL); a POST must not depend on redirects.
for _path, _in_schema in ((PIPELINE_PATH, True), (f"{PIPELINE_PATH}/", False)):
    router.add_api_route(
        _path,
        submit_pipeline,
        methods=["POST"],
        response_model=SubmitResponse,
        responses=rejection_responses(400, 401, 402, 413, 422, 429),
        openapi_extra=_SUBMIT_OPENAPI,
        include_in_schema=_in_schema,
        summary="Submit a pipeline (one credit per source URL)",
        operation_id="submit_pipeline" if _in_schema else "submit_pipeline_slash",
    )


@router.get(
    f"{PIPELINE_PATH}/{{pipeline_id}}",
    response_model=PipelineEnvelope,
    responses=rejection_responses(401, 404),
    summary="Pipeline status and results",
)
async def get_pipeline(
    pipeline_id: str, request: Request, runtime: RuntimeDep, owner: OwnerDep
) -> JSONResponse:
    pipeline = await asyncio.to_thread(
        runtime.pipeline, owner=owner, pipeline_id=pipeline_id, base_url=str(request.base_url)
    )
    if isinstance(pipeline, NotFound):
        raise Refused(pipeline)
    return JSONResponse({"pipeline": pipeline})


@router.get(
    f"{PIPELINE_PATH}/{{pipeline_id}}/webhooks",
    responses=rejection_responses(401, 404),
    summary="Extension: webhook deliveries of a pipeline and each attempt",
)
async def get_webhook_deliveries(pipeline_id: str, runtime: RuntimeDep, owner: OwnerDep) -> JSONResponse:
    deliveries = await asyncio.to_thread(runtime.webhook_deliveries, owner=owner, pipeline_id=pipeline_id)
    if isinstance(deliveries, NotFound):
        raise Refused(deliveries)
    return JSONResponse({"deliveries": deliveries})


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over ``limit`` bytes."""
    too_large = Refused(
        Rejected(reason=f"body: request body is larger than {limit} bytes", kind=RejectionKind.BODY_TOO_LARGE)
    )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_pipeline_request(body: bytes) -> PipelineRequest:
    """The body as a request of the wire contract; 400 REJECTED naming the field otherwise."""
    try:
        payload = json.loads(body)
    except RecursionError:
        # A body of nested brackets exhausts the parser's stack: hostile, not a server fault.
        raise Refused(Rejected(reason="body: malformed JSON (nested too deeply)")) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers over 4300 digits
        raise Refused(Rejected(reason=f"body: malformed JSON ({exc})")) from None
    if not isinstance(payload, dict):
        raise Refused(Rejected(reason="body: must be a JSON object with source, operations and sink"))
    try:
        return PipelineRequest.model_validate(payload)
    except ValidationError as exc:
        raise Refused(Rejected(reason=validation_reason(exc))) from None
