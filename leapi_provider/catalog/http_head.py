"""One keep-alive HTTP/1.1 connection that sends ``HEAD`` requests: change detection's fast path.

Why not httpx here: a plan fingerprints every source of the catalog, up to millions of ``HEAD`` requests, and
``httpx.AsyncClient`` spends about 2 ms of CPU on each (its connection pool and anyio layers; measured in
docs/benchmarks.md, "Change detection"), so 20,000 sources cost 35 s of a worker and 1M sources half an
hour. A ``HEAD`` exchange is the simplest one HTTP has: the answer is a status line and headers and never a
body (RFC 9110, 9.3.2), so this connection writes the request and reads up to the blank line, at about
60 us a request. Everything else (proxies, credentials in the URL, odd URLs, ``GET``) stays with httpx:
:mod:`leapi_provider.catalog.http_fingerprints` decides which path a source takes.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

#: The longest header block accepted (asyncio's stream default).
_MAX_HEADER_BYTES = 64 * 1024
_END_OF_HEADERS = b"\r\n\r\n"


class SourceConnectError(ConnectionError):
    """The connection to the source host could not be made (refused, unresolved, TLS, timeout)."""

    def __str__(self) -> str:
        return f"ConnectError: {super().__str__()}"


class HeadProtocolError(ConnectionError):
    """The answer was not an HTTP/1.x header block (or a longer one than :data:`_MAX_HEADER_BYTES`)."""


@dataclass(frozen=True, slots=True)
class HeadAnswer:
    """A ``HEAD`` answer: its status and headers (names in lower case; repeated ones joined by ``, ``)."""

    status: int
    headers: dict[str, str]


def parse_head_answer(block: bytes) -> tuple[HeadAnswer, bool]:
    """The answer in one header block (status line to blank line), and whether the connection stays open.

    :raises HeadProtocolError: not an HTTP/1.x status line.
    """
    lines = block.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status_text = rest[:3]
    if not version.startswith("HTTP/1.") or not status_text.isdigit():
        raise HeadProtocolError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    name = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and name:  # an obsolete folded continuation line
            headers[name] = f"{headers[name]} {line.strip()}"
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    tokens = headers.get("connection", "").lower()
    keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    return HeadAnswer(int(status_text), headers), keep_alive


class HeadConnection:
    """Sends ``HEAD`` requests to one origin over one connection, reopened when the server closes it.

    :param scheme: ``http`` or ``https``.
    :param host: the host to connect to (an IPv6 literal without brackets).
    :param port: the TCP port.
    :param host_header: the ``Host`` header (the URL's authority).
    :param tls: the TLS context for ``https``.
    :param user_agent: the ``User-Agent`` header.
    :param timeout: seconds to connect, and seconds for one answer.
    """

    def __init__(
        self,
        *,
        scheme: str,
        host: str,
        port: int,
        host_header: str,
        tls: ssl.SSLContext | None,
        user_agent: str,
        timeout: float,
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.tls = tls if scheme == "https" else None
        self.timeout = timeout
        self._request_tail = (
            f" HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\n\r\n"
        ).encode("latin-1")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def head(self, target: str) -> HeadAnswer:
        """``HEAD target`` (the path and query, already percent-encoded).

        A kept-alive connection that the server closed meanwhile is reopened once and the request sent
        again (``HEAD`` is idempotent).

        :raises SourceConnectError: no connection could be made.
        :raises OSError | TimeoutError | asyncio.IncompleteReadError | HeadProtocolError: the exchange failed.
        """
        if self._reader is not None and self._reader.at_eof():
            self.close()  # (the server closed the idle connection)
        reused = self._writer is not None
        if not reused:
            await self._connect()
        try:
            return await self._exchange(target)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self.close()
            fresh_close = isinstance(exc, asyncio.IncompleteReadError) and not exc.partial
            if not reused or not (fresh_close or isinstance(exc, ConnectionResetError | BrokenPipeError)):
                raise
        await self._connect()
        return await self._exchange(target)

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                    limit=_MAX_HEADER_BYTES,
                )
        except (OSError, TimeoutError) as exc:
            raise SourceConnectError(
                f"{self.scheme}://{self.host}:{self.port}: {exc or 'timed out'}"
            ) from exc

    async def _exchange(self, target: str) -> HeadAnswer:
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"HEAD " + target.encode("ascii") + self._request_tail)
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    answer, keep_alive = parse_head_answer(await self._reader.readuntil(_END_OF_HEADERS))
                    if not 100 <= answer.status < 200:
                        break  # (1xx answers are interim: the final one follows)
        except asyncio.LimitOverrunError as exc:
            self.close()
            raise HeadProtocolError(f"header block over {_MAX_HEADER_BYTES} bytes") from exc
        except BaseException:
            self.close()  # (an exchange cut short leaves the stream mid-answer)
            raise
        if not keep_alive:
            self.close()
        return answer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
