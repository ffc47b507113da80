"""The age gate of account creation."""

from __future__ import annotations

from datetime import date

import pytest

from control_plane.accounts import AgeEvidence, age_on, check_age
from control_plane.errors import FailedPrecondition, InvalidArgument

TODAY = date(2026, 3, 1)


@pytest.mark.parametrize(
    ("born", "on", "age"),
    [
        (date(2013, 3, 1), date(2026, 3, 1), 13),
        (date(2013, 3, 2), date(2026, 3, 1), 12),
        (date(2012, 2, 29), date(2025, 2, 28), 12),  # leap-day birthdays come on 1 March
        (date(2012, 2, 29), date(2025, 3, 1), 13),
        (date(2012, 2, 29), date(2024, 2, 29), 12),
    ],
)
def test_age_counts_whole_years(born: date, on: date, age: int) -> None:
    assert age_on(born, on) == age


def test_a_birth_date_wins_over_an_attested_age() -> None:
    with pytest.raises(FailedPrecondition):
        check_age(AgeEvidence(birth_date=date(2020, 1, 1), age_attested=40), today=TODAY, minimum_age=13)


def test_under_the_minimum_age_is_a_failed_precondition_with_a_reason() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        check_age(AgeEvidence(age_attested=12), today=TODAY, minimum_age=13)
    assert caught.value.reason == "UNDER_MINIMUM_AGE"


@pytest.mark.parametrize(
    ("evidence", "field"),
    [
        (AgeEvidence(), "birth_date"),
        (AgeEvidence(birth_date=date(2026, 3, 2)), "birth_date"),
        (AgeEvidence(birth_date=date(1800, 1, 1)), "birth_date"),
        (AgeEvidence(age_attested=151), "age_attested"),
    ],
)
def test_missing_or_impossible_evidence_is_invalid(evidence: AgeEvidence, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_age(evidence, today=TODAY, minimum_age=13)
    assert caught.value.field == field


def test_a_minimum_age_of_zero_admits_a_newborn() -> None:
    assert check_age(AgeEvidence(birth_date=TODAY), today=TODAY, minimum_age=0) == 0
