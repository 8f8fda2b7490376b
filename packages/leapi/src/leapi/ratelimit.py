"""The account's request rate, learned from the API's refusals and shared by every client of a process.

The LEAPI docs say only that "a rate limiter limits the number of requests received by the API within any
given minute" and that a refused request is answered ``REJECTED`` "Too Many Requests. Rate limit
exceeded.": no limit figure, no ``Retry-After``. So a client has to learn the limit, and every client of one
account in one process (the hooks of parallel tasks in one Airflow worker, a triggerer's triggers) has to
learn it together, or they keep taking each other's slots.

:class:`AdaptiveRateLimiter` does that for every API request (submits and status reads alike: the docs'
limiter counts "requests received"), AIMD style:

* until a refusal it lets every request through;
* a refusal with a hint (``Retry-After``) is waited out by the request itself, and the learned limit is
  dropped: the server says when;
* a refusal without a hint sets the limit to the requests this process got accepted in the last minute
  (what it measurably gets). When that is already the limit, the account's limit shrank or other
  processes took a share: the limit halves (multiplicative decrease). One decision never more than
  halves a learned limit: a process that has just taken a job over (:meth:`AdaptiveRateLimiter.restore`)
  has accepted next to nothing in its minute yet, and must not conclude one request a minute from that.
  Refusals of requests sent before that decision do not decrease it again (they could not have known);
* each minute without a refusal raises the limit by one (additive increase);
* requests are booked in a sliding one-minute window: once ``limit`` requests (refused ones included,
  since the server counts them) went out in the last minute, the next waits until the oldest of them is
  a minute old, plus a small margin and jitter (and its turn behind requests already waiting: first
  come, first served). No slot is more than about a minute after the one ``limit`` places ahead of it:
  no burst of quick retries, no idle minutes.

A caller that knows its share of the account's rate declares it (:meth:`AdaptiveRateLimiter.pace`): the
requests are then spaced evenly at that rate from the first one, refused or not. That is the only way to
stay under a limit the API enforces on some requests only (a server that refuses submits but never a
status read teaches nothing about the reads). Only when that even gap is longer than the caller will wait
for a slot do the requests go in bursts, of at most the declared rate in any window.

What it cannot see: requests of the same account from other processes (other Airflow workers, the
triggerer, other machines). Their refusals still reach each process, which then lowers its own rate;
per-account pacing across workers needs an Airflow pool sized to the account's limit (see the provider
docs). A process that takes over a job (a resumed Airflow task) can start from what the previous one
learned: :meth:`AdaptiveRateLimiter.snapshot` and :meth:`AdaptiveRateLimiter.restore`.

:data:`SHARED_LIMITERS` holds one limiter per (base URL, API key) for the whole process.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("leapi")

#: The docs' window: "within any given minute".
RATE_WINDOW_S = 60.0
#: Added to every wait for a slot: the server's clock and the request's travel time are not ours.
SLOT_MARGIN_S = 0.5
#: Up to this much more, at random, so that processes sharing an account do not return in lockstep.
SLOT_JITTER_S = 3.0


@dataclass(frozen=True)
class Booking:
    """A request's place in the limiter: pass it back with the answer.

    :param sequence: the order in which requests were booked.
    :param wait: seconds the request must wait before it is sent.
    :param slot: when it may be sent (the limiter's clock).
    """

    sequence: int
    wait: float
    slot: float = 0.0


class AdaptiveRateLimiter:
    """Paces one account's requests by the rate its refusals taught (thread-safe; see the module docs).

    :param clock: monotonic seconds (tests pass their own).
    :param wall_clock: Unix seconds, for :meth:`snapshot` and :meth:`restore` (tests pass their own).
    :param window_s: the rate window.
    :param margin_s: added to every wait for a slot.
    :param jitter_s: up to this much more, at random.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        window_s: float = RATE_WINDOW_S,
        margin_s: float = SLOT_MARGIN_S,
        jitter_s: float = SLOT_JITTER_S,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self.window_s = window_s
        self.margin_s = margin_s
        self.jitter_s = jitter_s
        #: Requests allowed per window; ``None`` until the API refused one.
        self.limit: int | None = None
        #: The declared rate (:meth:`pace`): requests at least ``window_s / paced_per_minute`` apart, or
        #: in bursts of at most that many a window when that gap is longer than ``_pace_max_gap_s``.
        self.paced_per_minute: float | None = None
        self._pace_max_gap_s: float | None = None
        self._sent: deque[float] = deque()  # start times (booked slots) of requests, refused ones too
        self._accepted: deque[float] = deque()
        self._sequence = 0
        self._decided_at_sequence = 0  # requests booked up to here were sent before the last decrease
        self._changed_at = 0.0
        self._lock = threading.Lock()

    def book(self) -> Booking:
        """Book the next request's slot."""
        with self._lock:
            now = self._clock()
            self._forget(now)
            slot = self._next_slot(now, jitter=random.uniform(0, self.jitter_s))
            self._sent.append(slot)
            self._sequence += 1
            return Booking(sequence=self._sequence, wait=slot - now, slot=slot)

    def cancel(self, booking: Booking) -> None:
        """Give a booked slot back: the request will not be sent (it would wait past its budget)."""
        with self._lock:
            if booking.slot in self._sent:
                self._sent.remove(booking.slot)

    def next_wait(self) -> float:
        """Seconds a request booked now would wait (nothing is booked; no jitter counted)."""
        with self._lock:
            now = self._clock()
            self._forget(now)
            return max(self._next_slot(now, jitter=0.0) - now, 0.0)

    def pace(self, per_minute: float | None, *, max_gap_s: float | None = None) -> None:
        """Space this process's requests of the account evenly at ``per_minute`` (its declared share of
        the account's rate), from now on, whatever the API refuses or not; ``None``: stop pacing. The
        learned limit still applies on top. The last declaration wins.

        :param max_gap_s: the longest a caller will wait for one slot (its rate-limit budget). When the
            even gap is longer, requests go in bursts instead, at most ``per_minute`` of them in any
            window: a caller that stops for the next slot then gets a window's worth when it comes back,
            not a single request.
        """
        if per_minute is not None and per_minute <= 0:
            raise ValueError(f"per_minute must be more than 0 (or None), got {per_minute!r}")
        with self._lock:
            self.paced_per_minute = per_minute
            self._pace_max_gap_s = max_gap_s

    def _next_slot(self, now: float, *, jitter: float) -> float:
        slot = now
        if self.paced_per_minute is not None and self._sent:
            gap = self.window_s / self.paced_per_minute
            if self._pace_max_gap_s is None or gap <= self._pace_max_gap_s:
                slot = max(slot, self._sent[-1] + gap)
            else:
                per_window = max(1, int(self.paced_per_minute))
                if len(self._sent) >= per_window:
                    slot = max(slot, self._sent[-per_window] + self.window_s + self.margin_s)
        if self.limit is not None and len(self._sent) >= self.limit:
            oldest_in_the_way = self._sent[-self.limit]
            slot = oldest_in_the_way + self.window_s + self.margin_s + jitter
        if self.limit is not None and self._sent:
            # First come, first served: no request is booked ahead of one already waiting (this also
            # keeps the bookings in order, which the window arithmetic relies on).
            slot = max(slot, self._sent[-1])
        return slot

    def accepted(self, booking: Booking) -> None:
        """The booked request was accepted; after a minute without refusals the limit grows by one."""
        with self._lock:
            now = self._clock()
            self._accepted.append(now)
            if self.limit is not None and now - self._changed_at >= self.window_s:
                self.limit += 1
                self._changed_at = now
                log.info("LEAPI rate limit: no refusal for a minute; pacing requests at %d/min", self.limit)

    def refused(self, booking: Booking) -> None:
        """The booked request was refused for the rate limit, with no hint how long to wait."""
        with self._lock:
            now = self._clock()
            self._forget(now)
            if booking.sequence <= self._decided_at_sequence:
                return  # sent before the last decrease: it says nothing new
            accepted_last_minute = len(self._accepted)
            learned = max(1, accepted_last_minute)
            if self.limit is not None and accepted_last_minute >= self.limit:
                learned = max(1, self.limit // 2)
            elif self.limit is not None:
                learned = max(1, self.limit // 2, min(learned, self.limit - 1))
            self.limit = learned
            self._decided_at_sequence = self._sequence
            self._changed_at = now
            log.warning(
                "LEAPI rate limit: refused after %d accepted request(s) in the last minute; pacing "
                "requests of this account in this process at %d/min",
                accepted_last_minute,
                learned,
            )

    def hinted(self) -> None:
        """The API refused a request and said when to retry (``Retry-After``): its hints replace what was
        learned, so the limiter steps aside until a refusal comes without one."""
        with self._lock:
            if self.limit is not None:
                log.info("LEAPI rate limit: the API sends Retry-After; no longer pacing by the learned rate")
            self.limit = None

    def snapshot(self) -> dict[str, Any]:
        """What this limiter learned, JSON-able and in wall-clock time: hand it to :meth:`restore` in the
        process that takes the work over (the limiter is per process)."""
        with self._lock:
            now, wall = self._clock(), self._wall_clock()
            self._forget(now)
            return {
                "limit": self.limit,
                "sent": [round(wall - (now - t), 3) for t in self._sent],
                "accepted": [round(wall - (now - t), 3) for t in self._accepted],
            }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Take over what another process learned (:meth:`snapshot`): the lower limit wins, and its
        requests of the last minute count in this window too."""
        with self._lock:
            now, wall = self._clock(), self._wall_clock()
            limit = snapshot.get("limit")
            if limit is not None and (self.limit is None or int(limit) < self.limit):
                self.limit = max(1, int(limit))
                self._changed_at = now
            for name, times in (("sent", self._sent), ("accepted", self._accepted)):
                merged = sorted([*times, *(now - (wall - float(t)) for t in snapshot.get(name, ()))])
                times.clear()
                times.extend(merged)
            self._forget(now)

    def _forget(self, now: float) -> None:
        horizon = now - self.window_s
        for times in (self._sent, self._accepted):
            while times and times[0] <= horizon:
                times.popleft()


class SharedLimiters:
    """One :class:`AdaptiveRateLimiter` per (base URL, API key) for the whole process (thread-safe)."""

    def __init__(self) -> None:
        self._limiters: dict[tuple[str, str], AdaptiveRateLimiter] = {}
        self._lock = threading.Lock()

    def for_account(self, base_url: str, api_key: str) -> AdaptiveRateLimiter:
        # (keyed by a digest: the registry never holds the API key itself)
        account = (base_url, hashlib.sha256(api_key.encode()).hexdigest())
        with self._lock:
            limiter = self._limiters.get(account)
            if limiter is None:
                limiter = self._limiters[account] = AdaptiveRateLimiter()
            return limiter

    def clear(self) -> None:
        """Forget every learned rate (tests; or after an account's limit was raised)."""
        with self._lock:
            self._limiters.clear()


#: The limiters of this process.
SHARED_LIMITERS = SharedLimiters()
