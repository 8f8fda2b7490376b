"""The webhook URL of one waiting batch: its channel, its secret token, and how both are checked.

A *channel* names one waiting task instance (all its tries): the LEAPI pipelines it submits carry a
``notify_url`` ``<receiver base URL>/v1/<channel>?token=<token>``, the receiver queues each webhook on that channel,
and the task's trigger reads the channel. The *token* is an HMAC of the channel under the receiver's secret
(the password of the ``leapi_webhooks`` connection): unguessable without the secret, valid for that channel
only, deterministic (a retried task builds the same URL, so its resubmit keeps the same idempotency key).

The LEAPI docs document no webhook signature but let ``notify_url`` carry "some own data": the token is
that data. ``leapi-server`` also signs its webhooks (:mod:`leapi.webhooks`); the receiver checks both.
Pure stdlib: the worker, the triggerer and the api-server all import it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

#: Receiver routes live under this version segment (``POST <base>/v1/<channel>?token=<token>``).
ROUTE_VERSION = "v1"
#: The query parameter of the token: a name Airflow's access log redacts (``token=***``).
TOKEN_PARAM = "token"
#: What a channel may look like (what :func:`channel_for_task` makes, and what the receiver accepts).
CHANNEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{7,63}$")
#: Length of a token: 32 base64url characters, 192 bits of the HMAC-SHA256.
TOKEN_CHARS = 32
#: Domain separation: a token is never a valid HMAC of anything else signed with the same secret.
_TOKEN_CONTEXT = b"leapi-provider/webhook-channel/v1\x00"


class InvalidChannelError(ValueError):
    """The channel is not one :func:`channel_for_task` could have made."""


def channel_for_task(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The channel of one task instance, the same for each of its tries.

    Not secret (the token is): a hash keeps it short, URL-safe and free of run ids' characters.
    """
    identity = json.dumps([dag_id, run_id, task_id, int(map_index)], separators=(",", ":"))
    return "ti-" + hashlib.sha256(identity.encode()).hexdigest()[:40]


def check_channel(channel: str) -> str:
    """``channel`` if it has the form of a channel, else :class:`InvalidChannelError`."""
    if not isinstance(channel, str) or not CHANNEL_PATTERN.fullmatch(channel):
        raise InvalidChannelError(f"not a webhook channel: {channel!r}")
    return channel


def channel_token(secret: str, channel: str) -> str:
    """The URL token of ``channel``: base64url HMAC-SHA256 of the channel under ``secret``, 32 characters."""
    if not secret:
        raise ValueError("the webhook token secret is empty")
    digest = hmac.new(secret.encode(), _TOKEN_CONTEXT + check_channel(channel).encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")[:TOKEN_CHARS]


def token_matches(secret: str, channel: str, token: str) -> bool:
    """Whether ``token`` is the token of ``channel``, compared in constant time."""
    try:
        expected = channel_token(secret, channel)
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode(), token.encode(errors="replace"))


def notify_url(base_url: str, secret: str, channel: str) -> str:
    """The ``notify_url`` of ``channel`` on the receiver at ``base_url``."""
    token = channel_token(secret, channel)
    return f"{base_url.rstrip('/')}/{ROUTE_VERSION}/{channel}?{TOKEN_PARAM}={token}"
