"""Keeping credentials out of messages and logs.

A result's ``tmp_url`` is signed: its query string is a credential for 24 hours. Every message and log line
the client writes shows such URLs without their query string, and :func:`install_log_redaction` makes
httpx's own ``HTTP Request: GET <url>`` lines do the same. The API key travels in a header that nothing
here logs.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

import httpx

_URL_WITH_QUERY = re.compile(r"https?://[^\s\"'<>]+\?[^\s\"'<>]*")


def redact_url(url: str | httpx.URL) -> str:
    """``url`` without its query string and fragment (signed result URLs carry credentials there)."""
    text = str(url)
    parts = urlsplit(text)
    if not parts.query and not parts.fragment:
        return text
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "<redacted>" if parts.query else "", ""))


def redact_text(text: str) -> str:
    """``text`` with the query string of every URL in it redacted."""
    return _URL_WITH_QUERY.sub(lambda m: redact_url(m.group(0)), text)


class RedactSignedUrlsFilter(logging.Filter):
    """Redacts URL query strings in httpx's own request log lines (``HTTP Request: GET <url> ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                redact_url(arg)
                if isinstance(arg, httpx.URL) or (isinstance(arg, str) and "?" in arg)
                else arg
                for arg in record.args
            )
        elif isinstance(record.msg, str) and "?" in record.msg:
            record.msg = redact_text(record.msg)
        return True


def install_log_redaction() -> None:
    """Add :class:`RedactSignedUrlsFilter` to the ``httpx`` and ``httpcore`` loggers (once; idempotent).

    Every client calls it: logging httpx at INFO would otherwise print signed result URLs in full.
    """
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSignedUrlsFilter) for f in logger.filters):
            logger.addFilter(RedactSignedUrlsFilter())
