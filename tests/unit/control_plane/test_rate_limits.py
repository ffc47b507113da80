"""Token buckets: refill, burst, retry hints, separate keys, bounded memory, and their config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.clock import ManualClock
from control_plane.config import ConfigError, ControlPlaneConfig
from control_plane.errors import RateLimited
from control_plane.rate_limits import BucketRate, RateLimiter, account_rate_limiter, key_rate_limiter

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _limiter(per_second: float, burst: int, clock: ManualClock, max_buckets: int = 100) -> RateLimiter:
    return RateLimiter(BucketRate(per_second, burst), scope="API key", clock=clock, max_buckets=max_buckets)


def test_a_full_bucket_allows_its_burst_then_refuses_with_the_time_to_the_next_token() -> None:
    clock = ManualClock(START)
    limiter = _limiter(4, 3, clock)
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(RateLimited) as caught:
        limiter.take("a")
    assert caught.value.retry_after_s == pytest.approx(0.25)
    assert caught.value.reason == "RATE_LIMITED"
    assert "retry in 0.250 s" in caught.value.message


def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = ManualClock(START)
    limiter = _limiter(2, 2, clock)
    limiter.take("a")
    limiter.take("a")
    clock.advance(timedelta(seconds=0.5))
    limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.take("a")
    clock.advance(timedelta(hours=1))
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.take("a")


def test_settling_calls_borrow_down_to_minus_one_burst_and_the_debt_delays_later_calls() -> None:
    clock = ManualClock(START)
    limiter = _limiter(1, 2, clock)
    limiter.take("a")
    limiter.take("a")
    limiter.take("a", borrow=True)
    limiter.take("a", borrow=True)
    with pytest.raises(RateLimited) as caught:
        limiter.take("a", borrow=True)
    assert caught.value.retry_after_s == pytest.approx(1.0)
    clock.advance(timedelta(seconds=2))
    with pytest.raises(RateLimited) as caught:
        limiter.take("a")  # the debt is paid back first
    assert caught.value.retry_after_s == pytest.approx(1.0)


def test_a_clock_stepping_back_refills_nothing() -> None:
    clock = ManualClock(START)
    limiter = _limiter(1, 1, clock)
    limiter.take("a")
    clock.set(START - timedelta(seconds=30))
    with pytest.raises(RateLimited):
        limiter.take("a")
    clock.set(START)
    with pytest.raises(RateLimited):
        limiter.take("a")


def test_keys_have_separate_buckets_and_the_table_stays_bounded() -> None:
    clock = ManualClock(START)
    limiter = _limiter(1, 1, clock, max_buckets=10)
    limiter.take("a")
    limiter.take("b")
    for key in range(100):
        limiter.take(key)
    assert len(limiter) == 10


def test_limits_come_from_the_environment_and_zero_turns_them_off() -> None:
    clock = ManualClock(START)
    config = ControlPlaneConfig.from_env(
        {
            "ATELIER_KEY_RATE_PER_S": "0",
            "ATELIER_ACCOUNT_RATE_PER_S": "3",
            "ATELIER_ACCOUNT_BURST": "7",
            "ATELIER_MAX_CONCURRENT_GENERATIONS": "2",
        }
    )
    assert key_rate_limiter(config, clock) is None
    assert account_rate_limiter(config, clock) is not None
    assert (config.account_rate_per_s, config.account_burst, config.max_concurrent_generations) == (3, 7, 2)
    defaults = ControlPlaneConfig()
    assert (defaults.key_rate_per_s, defaults.key_burst) == (100, 200)
    assert (defaults.account_rate_per_s, defaults.account_burst, defaults.max_concurrent_generations) == (10, 40, 8)


def test_a_zero_burst_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="ATELIER_KEY_BURST"):
        ControlPlaneConfig.from_env({"ATELIER_KEY_BURST": "0"})
