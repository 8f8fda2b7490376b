"""The hand-off from the webhook receiver (api-server) to the waiting trigger (triggerer): a Redis list per
channel.

Two keys per channel, both expiring ``hint_ttl`` seconds after the last webhook (hash-tagged, so that they
share a Redis Cluster slot):

* ``leapi:webhooks:{<channel>}:hints``: a list of pipeline ids the trigger has not read yet;
* ``leapi:webhooks:{<channel>}:seen``: every pipeline id ever hinted on the channel (de-duplication).

The receiver runs one Lua script (:data:`_PUBLISH_SCRIPT`): if the id is new to ``seen``, push it on
``hints``. A pipeline finishes once, so its id is hinted at most once per channel however often LEAPI
retries or an attacker replays. A hint that arrives while no trigger listens (the triggerer is down, the
task has not deferred yet, it is between tries) waits in the list until read or expired.

The trigger reads with :meth:`WebhookHintSource.wait_for_hints`: BLPOP (woken within milliseconds of the
push), then the rest of the list. A hint is only a reason to read a status sooner: the status read decides,
and when Redis is down the wait simply times out and the caller polls. A hint whose read finds the pipeline
still running (forged with a leaked URL, or pushed by hand) would make the true webhook a "duplicate": the
trigger hands such ids back with :meth:`WebhookHintSource.rearm`, so the next webhook for them counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self

from leapi_provider.webhooks.hook import DEFAULT_CONN_ID, LeapiWebhooksHook, RedisLocation, WebhookSettings
from leapi_provider.webhooks.tokens import check_channel

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger(__name__)

KEY_PREFIX = "leapi:webhooks"
#: Ids read per LPOP after BLPOP returned one (a batch's burst of webhooks comes back in one call).
_DRAIN_COUNT = 10_000
#: Extra time a Redis call may take beyond the BLPOP timeout before it is abandoned (a hung server).
_CALL_GRACE_S = 5.0

# KEYS[1] seen set, KEYS[2] hints list; ARGV[1] pipeline id, ARGV[2] ttl seconds. Returns 1 if queued.
_PUBLISH_SCRIPT = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def hint_keys(channel: str) -> tuple[str, str]:
    """The ``(seen, hints)`` keys of ``channel``."""
    tag = f"{KEY_PREFIX}:{{{check_channel(channel)}}}"
    return f"{tag}:seen", f"{tag}:hints"


class HintPublisher:
    """The receiver's side: queue a pipeline id on a channel, once.

    :param location: where the hints go (one client, shared by every request of the process).
    :param ttl_s: how long unread hints and the de-duplication set live after the last webhook.
    """

    def __init__(self, *, location: RedisLocation, ttl_s: int) -> None:
        self.location = location
        self.ttl_s = int(ttl_s)
        self._client: redis.asyncio.Redis | None = None
        self._script: Any = None

    async def publish(self, channel: str, pipeline_id: int) -> bool:
        """Queue ``pipeline_id`` on ``channel``; ``False`` if it was hinted there before (a duplicate).

        :raises redis.RedisError: Redis is unreachable (the receiver answers 503: LEAPI retries later).
        """
        if self._client is None:
            self._client = self.location.client()
            self._script = self._client.register_script(_PUBLISH_SCRIPT)
        seen, hints = hint_keys(channel)
        queued = await self._script(keys=[seen, hints], args=[int(pipeline_id), self.ttl_s])
        return bool(queued)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class WebhookHintSource:
    """The trigger's side: wait for the pipeline ids hinted done on one channel.

    Cheap to build and JSON-serializable (:meth:`serialize`), so a trigger takes it as a kwarg. Holds one
    Redis connection while in use; call :meth:`aclose` (or use ``async with``) when the wait ends.

    :param channel: the channel the task's ``notify_url`` names (:func:`~.tokens.channel_for_task`).
    :param conn_id: the ``leapi_webhooks`` connection (for its Redis).
    """

    def __init__(self, *, channel: str, conn_id: str = DEFAULT_CONN_ID) -> None:
        self.channel = check_channel(channel)
        self.conn_id = conn_id
        self._client: redis.asyncio.Redis | None = None
        self._settings: WebhookSettings | None = None
        self._failures = 0

    def serialize(self) -> dict[str, str]:
        """The kwargs that rebuild this source (:meth:`deserialize`)."""
        return {"channel": self.channel, "conn_id": self.conn_id}

    @classmethod
    def deserialize(cls, data: Mapping[str, Any]) -> WebhookHintSource:
        return cls(channel=str(data["channel"]), conn_id=str(data.get("conn_id") or DEFAULT_CONN_ID))

    async def _redis(self) -> redis.asyncio.Redis:
        if self._client is None:
            if self._settings is None:
                self._settings = await LeapiWebhooksHook(self.conn_id).aget_settings()
            self._client = self._settings.redis.client()
        return self._client

    async def wait_for_hints(self, timeout: float) -> set[int]:
        """Pipeline ids hinted done on the channel, waiting up to ``timeout`` seconds for the first one.

        Returns at once with everything already queued (hints that came while nobody listened), else as soon
        as one arrives, else an empty set after ``timeout``. Never raises for Redis or connection trouble:
        it logs, waits out ``timeout`` and returns an empty set (the caller then polls). Each id is returned
        once; ids the caller does not wait for (late, forged or of an earlier try) are its to ignore.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        try:
            client = await self._redis()
            _, key = hint_keys(self.channel)
            ids = await self._drain(client, key)
            remaining = deadline - time.monotonic()
            # BLPOP's timeout is whole or fractional seconds, 0 meaning forever: never pass 0.
            if not ids and remaining >= 0.01:
                popped = await asyncio.wait_for(
                    client.blpop([key], timeout=remaining), timeout=remaining + _CALL_GRACE_S
                )
                if popped is not None:
                    ids = [popped[1], *await self._drain(client, key)]
            self._failures = 0
            return _pipeline_ids(ids)
        except asyncio.CancelledError:
            await self._discard_client()  # a BLPOP cut short leaves the connection mid-command
            raise
        except Exception as exc:  # noqa: BLE001 - a hint source never fails the wait: polling takes over
            self._failures += 1
            log_at = (
                logging.WARNING if self._failures in (1, 10) or self._failures % 100 == 0 else logging.DEBUG
            )
            log.log(log_at, "LEAPI webhook hints unavailable (%d in a row), polling instead: %s",
                    self._failures, f"{type(exc).__name__}: {exc}")  # fmt: skip
            await self._discard_client()
            remaining = deadline - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
            return set()

    async def hinted(self) -> set[int]:
        """Every pipeline id hinted on the channel so far (its de-duplication set), whoever read the hint:
        what a trigger that restarted, or the next deferral of the same task, starts from. Best effort:
        an empty set when Redis cannot be read (polling takes over)."""
        try:
            client = await self._redis()
            seen, _ = hint_keys(self.channel)
            members = await asyncio.wait_for(client.smembers(seen), timeout=_CALL_GRACE_S)
        except Exception as exc:  # noqa: BLE001 - a hint source never fails the wait: polling takes over
            log.warning(
                "LEAPI webhook hints unavailable, polling instead: %s", f"{type(exc).__name__}: {exc}"
            )
            await self._discard_client()
            return set()
        return _pipeline_ids(list(members))

    async def rearm(self, pipeline_ids: Iterable[int]) -> None:
        """Forget that ``pipeline_ids`` were hinted: their read found them still running, so the hint was
        premature and the next webhook for them must not be dropped as a duplicate, nor the premature hint
        still queued be read again. Best effort."""
        ids = [int(pid) for pid in pipeline_ids]
        if not ids:
            return
        try:
            client = await self._redis()
            seen, hints = hint_keys(self.channel)
            async with client.pipeline(transaction=True) as pipe:
                pipe.srem(seen, *ids)
                for pipeline_id in ids:
                    pipe.lrem(hints, 0, str(pipeline_id))
                await asyncio.wait_for(pipe.execute(), timeout=_CALL_GRACE_S)
        except Exception as exc:  # noqa: BLE001 - then a true webhook may be dropped: the fallback poll remains
            log.warning("Could not re-arm LEAPI webhook hints for %s: %s", ids, exc)
            await self._discard_client()

    @staticmethod
    async def _drain(client: redis.asyncio.Redis, key: str) -> list[Any]:
        drained = await asyncio.wait_for(client.lpop(key, _DRAIN_COUNT), timeout=_CALL_GRACE_S)
        return list(drained or [])

    async def _discard_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def aclose(self) -> None:
        await self._discard_client()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _pipeline_ids(values: list[Any]) -> set[int]:
    ids = set()
    for value in values:
        with contextlib.suppress(TypeError, ValueError):
            ids.add(int(value))
    return ids
