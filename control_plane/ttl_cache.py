"""A small in-process cache whose entries live a bounded time, for facts read on every RPC.

The hot RPCs (ReserveCredits, CommitReservation, StoreContent) would otherwise read the same
rows on every call: the API key, the tenant's policy profile and identity provider. Those
change rarely, and the code that changes them through this process clears the cache at once;
a change made elsewhere (another replica, the CLI on the database) takes effect here within
the time to live. Entries expire on a monotonic clock, not the server's `Clock`: the bound is
on real staleness, whatever time a test or an `--as-of` command pretends it is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

_K = TypeVar("_K")
_V = TypeVar("_V")

DEFAULT_MAX_ENTRIES = 10_000
"""Entries kept before the cache starts over; bounds its memory whatever callers send."""


class TtlCache(Generic[_K, _V]):
    """Values by key, each kept `ttl_s` seconds after it was loaded. Thread-safe.

    A time to live of 0 turns the cache off: every `get_or_load` loads.
    """

    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Creates an empty cache.

        Args:
            ttl_s: Seconds an entry is served after it was loaded, >= 0.
            max_entries: Most entries held, >= 1; when full, the cache is emptied.
            monotonic: The clock entries expire on (seconds).

        Raises:
            ValueError: `ttl_s` < 0 or `max_entries` < 1.
        """
        if ttl_s < 0 or max_entries < 1:
            raise ValueError(f"a TtlCache needs ttl_s >= 0 and max_entries >= 1, got {ttl_s} and {max_entries}")
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._entries: dict[_K, tuple[float, _V]] = {}
        self._lock = threading.Lock()

    def get_or_load(self, key: _K, load: Callable[[], _V]) -> _V:
        """The live value under `key`, else what `load()` returns, kept for the time to live.

        What `load` raises propagates and is not kept (a refusal is never cached). `load`
        runs outside the cache's lock, so a slow load never blocks other keys; two callers
        missing the same key at once may both load it.
        """
        if self._ttl_s == 0:
            return load()
        now = self._monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = load()
        with self._lock:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[key] = (now + self._ttl_s, value)
        return value

    def clear(self) -> None:
        """Forgets every entry: the next reads load afresh."""
        with self._lock:
            self._entries.clear()
