"""How long an RPC waits for a pooled connection: within its caller's deadline, never longer than the pool's."""

from __future__ import annotations

import pytest

from control_plane.db.pool import CONNECTION_WAIT_MARGIN_S, connection_wait_s


def test_without_a_deadline_the_pool_timeout_applies() -> None:
    assert connection_wait_s(None, 30.0) == 30.0


@pytest.mark.parametrize("remaining", [0.05, 0.5, 1.0, 3.0, 10.0, 29.0])
def test_the_wait_ends_early_enough_to_answer_before_the_deadline(remaining: float) -> None:
    wait = connection_wait_s(remaining, 30.0)
    assert 0 < wait < remaining
    assert remaining - wait == pytest.approx(min(CONNECTION_WAIT_MARGIN_S, remaining / 5))


def test_a_long_deadline_is_capped_by_the_pool_timeout_and_a_passed_one_waits_not_at_all() -> None:
    assert connection_wait_s(3600.0, 30.0) == 30.0
    assert connection_wait_s(-1.0, 30.0) == 0.0
    assert connection_wait_s(0.0, 30.0) == 0.0
