"""Who may submit, and how often: API keys and the per-key rate limit."""

from __future__ import annotations

import collections
import hashlib
import hmac
import math
import threading

from leapi_server.clock import SYSTEM_CLOCK, Clock
from leapi_server.outcomes import RateLimited


class KeyRing:
    """The accepted API keys. Lookups compare against every key in constant time; the store only ever
    sees an owner id derived from the key (its SHA-256), never the key.

    :param keys: the configured API keys.
    """

    def __init__(self, *, keys: tuple[str, ...]) -> None:
        self._keys = [(k.encode(), hashlib.sha256(k.encode()).hexdigest()) for k in keys]

    def owner_of(self, presented: str | None) -> str | None:
        """The account of a presented key, or None when it is missing or not configured."""
        if not presented:
            return None
        candidate = presented.encode()
        owner = None
        for key, key_owner in self._keys:  # no early exit: the time taken does not depend on which key
            if hmac.compare_digest(candidate, key):
                owner = key_owner
        return owner


class RateLimiter:
    """Sliding one-minute window per owner over POST /v1/pipeline requests (in memory).

    :param per_minute: requests allowed per window; 0 disables the limit.
    :param clock: the window's time.
    :param window_s: the window's length.
    :param count_refused: count refused requests in the window too (``--compat docs``: the docs say the
        limit is on "requests received", so a client that retries quickly keeps itself limited).
    """

    def __init__(
        self,
        *,
        per_minute: int,
        clock: Clock = SYSTEM_CLOCK,
        window_s: float = 60.0,
        count_refused: bool = False,
    ) -> None:
        self.per_minute = per_minute
        self.count_refused = count_refused
        self.window_s = window_s
        self._clock = clock
        self._hits: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def hit(self, owner: str) -> RateLimited | None:
        """Count a request; ``None`` if allowed, else how long until one more would be."""
        if not self.per_minute:
            return None
        now = self._clock()
        with self._lock:
            hits = self._hits[owner]
            # Hits "in the future" mean the wall clock was stepped back: forget them rather than hold
            # the key back until the clock catches up.
            while hits and hits[-1] > now:
                hits.pop()
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= self.per_minute:
                if self.count_refused:
                    hits.append(now)
                # (with refused hits counted, the one that frees a slot is the per_minute-th newest)
                oldest_blocking = hits[-self.per_minute]
                return RateLimited(retry_after_s=max(1, math.ceil(oldest_blocking + self.window_s - now)))
            hits.append(now)
            return None
