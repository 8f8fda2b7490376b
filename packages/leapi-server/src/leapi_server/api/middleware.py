"""Response-wide behaviour that no single route owns."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leapi.constants import IDEMPOTENCY_SUPPORT_HEADER, IDEMPOTENCY_SUPPORTED

_HEADER = (IDEMPOTENCY_SUPPORT_HEADER.lower().encode(), IDEMPOTENCY_SUPPORTED.encode())


class IdempotencySupportHeader:
    """Pure ASGI middleware: every response (errors and 404s included) says the Idempotency-Key extension
    is supported, so a client learns it from whatever it called first.

    :param app: the wrapped ASGI application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), _HEADER]
            await send(message)

        await self.app(scope, receive, send_with_header)
