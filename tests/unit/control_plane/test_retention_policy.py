"""RetentionPolicy reads its rules from a policy profile; removal cursors round-trip."""

from __future__ import annotations

from datetime import timedelta

import pytest

from control_plane.entrypoints.page_tokens import decode_removals_cursor, encode_removals_cursor
from control_plane.errors import InvalidArgument
from control_plane.policy import PolicyProfile
from control_plane.retention import RetentionPolicy


def test_the_product_defaults_are_the_seeds_policies() -> None:
    policy = RetentionPolicy.from_profile(PolicyProfile())
    assert policy.generated_retention == timedelta(days=30)
    assert policy.generated_retention_tiers == ("free",)
    assert policy.inactivity_purge == timedelta(days=90)
    assert policy.inactivity_exempt_tiers == ("premium",)
    assert policy.upload_lifetime == timedelta(hours=24)
    assert policy.deleted_purge == timedelta(days=30)
    assert policy.usage_retention == timedelta(days=730)


def test_a_profile_can_turn_the_age_limit_off_and_apply_it_to_every_tier() -> None:
    off = RetentionPolicy.from_profile(PolicyProfile(generated_retention_days=None))
    everyone = RetentionPolicy.from_profile(PolicyProfile(generated_retention_tiers=("free", "premium")))
    assert off.generated_retention is None
    assert everyone.generated_retention_tiers == ("free", "premium")
    assert off.snapshot()["generated_retention_days"] is None
    assert everyone.snapshot()["upload_lifetime_hours"] == 24


@pytest.mark.parametrize("after_id", [0, 1, 987654321])
def test_removal_cursors_round_trip(after_id: int) -> None:
    assert decode_removals_cursor(encode_removals_cursor(after_id)) == after_id


@pytest.mark.parametrize("token", ["nope", "cmVtb3ZhbHM6LTE", "bGVkZ2VyOjU"])
def test_foreign_or_malformed_cursors_are_refused(token: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        decode_removals_cursor(token)
    assert error.value.field == "page_token"
