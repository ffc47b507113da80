"""Token-bucket rate limits, kept in the memory of one control-plane process.

Two buckets guard the control plane (issue 8, part 2):

- **Per API key**, in the server interceptor, before authentication touches the database: every
  unary RPC of a key takes one token, so a runaway client is refused without costing a
  connection. Calls that settle work already admitted (ReleaseReservation, CommitReservation,
  StoreContent with `commit_reservation_id`) may borrow: they pass while the bucket is above
  minus one burst, because refusing them would waste a finished generation or keep credits
  held until expiry; the debt delays the key's next calls, and a flood of them (e.g. stores
  naming bogus reservations) is refused once the debt reaches a burst. The bucket is keyed by
  the SHA-256 of the bearer secret, so unknown keys are limited too and no secret is kept in
  memory.
- **Per account**, in ReserveCredits, after authentication: every reservation attempt of an
  account (keyed by tenant and account, so another tenant cannot drain it) takes one token.
  That is the one call every Generate makes first, whichever key or gateway sends it.

Why in memory and not in PostgreSQL: a bucket must answer in microseconds on every call, and a
shared row per key would serialise all of a key's calls on one row lock. The price: with N
control-plane replicas a caller can reach up to N times the configured rate (each replica
refills its own bucket). The hard bounds that must hold across replicas, credits and the
number of generations in flight per account, are checked in the database
(`credits.reserve_credits`), so the rate limit only smooths load and never guards money.

The table of buckets is capped (the least recently used is forgotten, and comes back full), so
a flood of random keys cannot grow memory without bound.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from control_plane.clock import Clock
from control_plane.config import ControlPlaneConfig
from control_plane.errors import RateLimited

DEFAULT_MAX_BUCKETS = 100_000
"""Buckets a limiter keeps before it forgets the least recently used one."""


@dataclass(frozen=True)
class BucketRate:
    """A token bucket's shape.

    Attributes:
        per_second: Tokens refilled per second, > 0.
        burst: Bucket capacity: how many calls may come at once after a quiet spell, >= 1.
    """

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError(f"a bucket needs per_second > 0 and burst >= 1, got {self!r}")


class RateLimiter:
    """Token buckets by key; thread-safe (the gRPC server serves from a thread pool).

    Args:
        rate: Refill rate and capacity of every bucket.
        scope: What a key is ("API key", "account"), for the caller's error message.
        clock: The server's clock (tests pass a manual one). A step backwards refills nothing.
        max_buckets: Most buckets kept at once.
    """

    def __init__(
        self,
        rate: BucketRate,
        *,
        scope: str,
        clock: Clock,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        self._rate = rate
        self._scope = scope
        self._clock = clock
        self._max_buckets = max_buckets
        self._lock = threading.Lock()
        # key -> (tokens, time of the last refill); most recently used last.
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def take(self, key: Hashable, *, borrow: bool = False) -> None:
        """Takes one token from `key`'s bucket.

        Args:
            borrow: Take it even from an empty bucket, down to minus one burst (for calls
                that settle admitted work); later calls wait until the debt is refilled.

        Raises:
            RateLimited: The bucket is empty (or, borrowing, a burst in debt); its
                `retry_after_s` is when the call would pass.
        """
        now = self._clock.now().timestamp()
        rate = self._rate
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(rate.burst), now))
            now = max(now, last)  # a clock stepped back refills nothing, and never twice
            tokens = min(float(rate.burst), tokens + (now - last) * rate.per_second)
            floor = 1.0 - rate.burst if borrow else 1.0  # the fewest tokens a call may take from
            if tokens < floor:
                self._buckets[key] = (tokens, now)
                raise RateLimited(self._scope, retry_after_s=(floor - tokens) / rate.per_second)
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self._max_buckets:
                self._buckets.popitem(last=False)

    def __len__(self) -> int:
        """Buckets currently kept."""
        with self._lock:
            return len(self._buckets)


def key_rate_limiter(config: ControlPlaneConfig, clock: Clock) -> RateLimiter | None:
    """The per-API-key limiter `config` asks for; None when `key_rate_per_s` is 0 (off)."""
    if config.key_rate_per_s == 0:
        return None
    return RateLimiter(BucketRate(config.key_rate_per_s, config.key_burst), scope="API key", clock=clock)


def account_rate_limiter(config: ControlPlaneConfig, clock: Clock) -> RateLimiter | None:
    """The per-account limiter `config` asks for; None when `account_rate_per_s` is 0 (off)."""
    if config.account_rate_per_s == 0:
        return None
    return RateLimiter(BucketRate(config.account_rate_per_s, config.account_burst), scope="account", clock=clock)
