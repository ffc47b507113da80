"""The in-process cache of per-RPC facts: entries live their time to live, refusals are never kept."""

from __future__ import annotations

import functools

import pytest

from control_plane.ttl_cache import TtlCache


class _Ticks:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_served_from_memory_until_its_time_to_live_ends() -> None:
    ticks = _Ticks()
    cache: TtlCache[str, int] = TtlCache(1.0, monotonic=ticks)
    loads: list[int] = []

    def load() -> int:
        loads.append(len(loads))
        return len(loads)

    assert cache.get_or_load("key", load) == 1
    ticks.now += 0.99
    assert cache.get_or_load("key", load) == 1
    ticks.now += 0.02
    assert cache.get_or_load("key", load) == 2
    assert len(loads) == 2


def test_what_the_loader_raises_is_not_kept() -> None:
    cache: TtlCache[str, int] = TtlCache(60.0)

    def refuse() -> int:
        raise LookupError("unknown")

    with pytest.raises(LookupError):
        cache.get_or_load("key", refuse)
    assert cache.get_or_load("key", lambda: 7) == 7


def test_none_is_a_value_like_any_other() -> None:
    cache: TtlCache[str, int | None] = TtlCache(60.0)
    assert cache.get_or_load("key", lambda: None) is None
    assert cache.get_or_load("key", lambda: 3) is None


def test_a_zero_time_to_live_loads_every_time_and_clear_forgets() -> None:
    off: TtlCache[str, int] = TtlCache(0.0)
    assert [off.get_or_load("key", functools.partial(int, n)) for n in range(3)] == [0, 1, 2]
    on: TtlCache[str, int] = TtlCache(60.0)
    on.get_or_load("key", lambda: 1)
    on.clear()
    assert on.get_or_load("key", lambda: 2) == 2


def test_a_full_cache_starts_over_instead_of_growing() -> None:
    cache: TtlCache[int, int] = TtlCache(60.0, max_entries=2)
    for key in range(3):
        cache.get_or_load(key, functools.partial(int, key))
    # The third key emptied the cache: the first is loaded afresh.
    assert cache.get_or_load(0, lambda: -1) == -1


@pytest.mark.parametrize(("ttl_s", "max_entries"), [(-1.0, 10), (1.0, 0)])
def test_a_negative_lifetime_or_no_room_is_refused(ttl_s: float, max_entries: int) -> None:
    with pytest.raises(ValueError, match="ttl_s >= 0 and max_entries >= 1"):
        TtlCache(ttl_s, max_entries=max_entries)
