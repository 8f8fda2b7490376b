"""Webhook signatures, Standard Webhooks style (https://www.standardwebhooks.com/). Pure stdlib.

This is an extension of ``leapi-server``: the LEAPI docs do not sign webhooks. Each delivery carries

* ``webhook-id``: the delivery id, the same on every retry of that delivery (drop duplicates by it);
* ``webhook-timestamp``: Unix seconds of this attempt;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">`` (space separated
  when several secrets sign during a rotation).

The secret is either ``whsec_<base64 key>`` (the Standard Webhooks form; the key is the decoded bytes)
or any other string, used as its UTF-8 bytes. ``leapi-server`` and :func:`verify_webhook` agree on both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
#: Deliveries signed further than this from now are refused (replay protection).
DEFAULT_TOLERANCE_S = 5 * 60


class WebhookVerificationError(Exception):
    """The webhook is not authentic (bad/missing signature) or is too old or too new (replay)."""


def generate_secret() -> str:
    """A fresh ``whsec_...`` secret with a 32-byte key."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except ValueError as exc:
            raise ValueError("a whsec_ secret must be followed by base64") from exc
    return secret.encode()


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of one delivery attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secret: str | bytes, msg_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for sending ``body`` now (or at ``timestamp``)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {HEADER_ID: msg_id, HEADER_TIMESTAMP: str(ts), HEADER_SIGNATURE: sign(secret, msg_id, ts, body)}


def verify_webhook(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> str:
    """Check a received webhook; return its delivery id (use it to drop duplicate deliveries).

    :param secret: the server's ``--webhook-secret`` (``LEAPI_WEBHOOK_SECRET``).
    :param headers: the request headers (any mapping; names are matched case-insensitively).
    :param body: the raw request body, exactly as received (not re-serialized JSON).
    :param tolerance_s: how far the timestamp may be from ``now``.
    :raises WebhookVerificationError: missing headers, stale timestamp or no matching signature.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get(HEADER_ID)
    raw_ts = lowered.get(HEADER_TIMESTAMP)
    raw_sigs = lowered.get(HEADER_SIGNATURE)
    if not msg_id or not raw_ts or not raw_sigs:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise WebhookVerificationError(f"invalid webhook-timestamp {raw_ts!r}") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp {timestamp} is more than {tolerance_s:.0f} s away from now ({current:.0f})"
        )
    payload = body.encode() if isinstance(body, str) else body
    expected = sign(secret, msg_id, timestamp, payload).encode()
    for candidate in raw_sigs.split():
        if hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise WebhookVerificationError("no webhook-signature matches the body and secret")
