"""The ``leapi_webhooks`` connection: where LEAPI's webhooks go, the secrets that authenticate them, and the
Redis that hands them from the api-server's receiver to the triggerer.

Connection (type ``leapi_webhooks``, default id ``leapi_webhooks_default``):

* **host**: the receiver's base URL as LEAPI reaches it: the api-server's public URL followed by the plugin's
  prefix, e.g. ``https://airflow.example.com/leapi-webhooks``;
* **password**: the token secret (any long random string): each batch's URL carries an HMAC of its channel
  under it (:mod:`leapi_provider.webhooks.tokens`);
* **extra** (all optional): ``signing_secret``, the ``--webhook-secret`` of a ``leapi-server`` (then every
  webhook must carry a valid Standard Webhooks signature too); ``redis_conn_id`` (default
  ``redis_default``); ``hint_ttl`` (seconds an unread hint is kept, default 2 days); ``signature_tolerance``
  (seconds a signed timestamp may be off, default 300).

The Redis connection is read as Airflow's redis provider writes it: host, port, login (ACL user), password,
extra ``db`` (or a numeric schema, as in ``redis://host:6379/0``) and extra ``ssl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from leapi.webhooks import DEFAULT_TOLERANCE_S
from leapi_provider.get_provider_info import LEAPI_WEBHOOKS_UI_FIELD_BEHAVIOUR as UI_FIELD_BEHAVIOUR
from leapi_provider.webhooks.tokens import notify_url

if TYPE_CHECKING:
    import redis.asyncio

from leapi_provider.get_provider_info import WEBHOOKS_CONN_TYPE as CONN_TYPE
from leapi_provider.get_provider_info import WEBHOOKS_DEFAULT_CONN_ID as DEFAULT_CONN_ID

DEFAULT_REDIS_CONN_ID = "redis_default"
#: An unread hint outlives the longest wait a task makes by default (24 h) and LEAPI's retries (19 min).
DEFAULT_HINT_TTL_S = 2 * 24 * 60 * 60
_REDIS_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, kw_only=True)
class RedisLocation:
    """Where the hints live."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    def client(self) -> redis.asyncio.Redis:
        """A new asyncio client (its own connection pool). No read timeout: BLPOP blocks on purpose, and
        :meth:`WebhookHintSource.wait_for_hints` bounds every call itself."""
        try:
            import redis.asyncio
        except ImportError as exc:
            from airflow.exceptions import AirflowOptionalProviderFeatureException

            raise AirflowOptionalProviderFeatureException(
                "LEAPI webhooks need redis-py: pip install 'airflow-provider-leapi[webhooks]'"
            ) from exc
        return redis.asyncio.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password,
            ssl=self.ssl,
            socket_connect_timeout=_REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=None,
        )


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    """What the receiver, the operators and the trigger read from the ``leapi_webhooks`` connection."""

    base_url: str
    token_secret: str
    redis: RedisLocation
    signing_secret: str | None = None
    hint_ttl_s: int = DEFAULT_HINT_TTL_S
    signature_tolerance_s: float = DEFAULT_TOLERANCE_S

    def notify_url(self, channel: str) -> str:
        return notify_url(self.base_url, self.token_secret, channel)


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def redis_location(conn: Any, extras: dict[str, Any]) -> RedisLocation:
    """A Redis connection (Airflow's redis provider's fields) as a :class:`RedisLocation`."""
    db = extras.get("db")
    if db in (None, "") and str(conn.schema or "").isdigit():
        db = conn.schema
    return RedisLocation(
        host=conn.host or "127.0.0.1",
        port=int(conn.port or 6379),
        db=int(db or 0),
        username=conn.login or None,
        password=conn.password or None,
        ssl=_truthy(extras.get("ssl", False)),
    )


def webhook_settings(conn: Any, extras: dict[str, Any], redis: RedisLocation) -> WebhookSettings:
    """The settings of a ``leapi_webhooks`` connection (``redis`` read from its ``redis_conn_id``)."""
    base_url = (conn.host or "").strip()
    if not base_url.lower().startswith(("http://", "https://")):
        raise ValueError(
            f"Connection {conn.conn_id!r}: host must be the receiver's base URL, e.g. "
            f"https://airflow.example.com/leapi-webhooks (got {base_url!r})"
        )
    if not conn.password:
        raise ValueError(f"Connection {conn.conn_id!r} has no token secret: put one in its password.")
    return WebhookSettings(
        base_url=base_url.rstrip("/"),
        token_secret=conn.password,
        signing_secret=extras.get("signing_secret") or None,
        redis=redis,
        hint_ttl_s=int(extras.get("hint_ttl") or DEFAULT_HINT_TTL_S),
        signature_tolerance_s=float(extras.get("signature_tolerance") or DEFAULT_TOLERANCE_S),
    )


class LeapiWebhooksHook(BaseHook):
    """Reads the ``leapi_webhooks`` connection (see the module docstring) and its Redis connection.

    :param leapi_webhooks_conn_id: the connection id.
    """

    conn_name_attr = "leapi_webhooks_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "LEAPI webhook receiver"

    def __init__(self, leapi_webhooks_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.leapi_webhooks_conn_id = leapi_webhooks_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": list(UI_FIELD_BEHAVIOUR["hidden-fields"]),
            "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
            "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
        }

    def get_settings(self) -> WebhookSettings:
        """The settings, read synchronously (workers, the api-server)."""
        conn = self.get_connection(self.leapi_webhooks_conn_id)
        extras = conn.extra_dejson
        redis_conn = self.get_connection(extras.get("redis_conn_id") or DEFAULT_REDIS_CONN_ID)
        return webhook_settings(conn, extras, redis_location(redis_conn, redis_conn.extra_dejson))

    async def aget_settings(self) -> WebhookSettings:
        """The settings, read without blocking the event loop (triggers)."""
        from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson

        conn = await get_async_connection(self.leapi_webhooks_conn_id, hook=self)
        extras = await get_async_extra_dejson(conn)
        redis_conn = await get_async_connection(extras.get("redis_conn_id") or DEFAULT_REDIS_CONN_ID)
        redis_extras = await get_async_extra_dejson(redis_conn)
        return webhook_settings(conn, extras, redis_location(redis_conn, redis_extras))

    def test_connection(self) -> tuple[bool, str]:
        """Builds a URL and pings Redis (the receiver itself is checked by sending it a webhook)."""
        import asyncio

        try:
            settings = self.get_settings()

            async def ping() -> None:
                client = settings.redis.client()
                try:
                    await client.ping()
                finally:
                    await client.aclose()

            asyncio.run(ping())
        except Exception as exc:  # noqa: BLE001 - the UI shows whatever went wrong
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"Redis answers; webhooks go to {settings.base_url}/v1/<channel>?token=..."
