"""Dependencies the routes share: the running server's state and the account behind the API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from leapi.constants import API_KEY_HEADER
from leapi_server.outcomes import Refused, Rejected, RejectionKind
from leapi_server.runtime import Runtime

api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="Your API key (the docs: `X-API-KEY: 1234567890`)."
)


def get_runtime(request: Request) -> Runtime:
    """The runtime ``create_app`` built for this application."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def require_owner(runtime: RuntimeDep, key: Annotated[str | None, Security(api_key_scheme)]) -> str:
    """The account of the request's ``X-API-KEY``; 401 REJECTED when it is missing or unknown."""
    owner = runtime.keys.owner_of(key)
    if owner is None:
        reason = f"missing {API_KEY_HEADER} header" if not key else "invalid API key"
        raise Refused(Rejected(reason=reason, kind=RejectionKind.UNAUTHENTICATED))
    return owner


OwnerDep = Annotated[str, Depends(require_owner)]
