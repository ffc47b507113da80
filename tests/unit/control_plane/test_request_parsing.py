"""Parsing of request fields: every bad value is INVALID_ARGUMENT naming its field."""

from __future__ import annotations

from datetime import date
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.accounts import Tier
from control_plane.entrypoints.convert import (
    TIER_FROM_PB,
    parameters_from_dict,
    parameters_to_dict,
    parse_birth_date,
    parse_enum,
    parse_page_size,
    parse_uuid,
)
from control_plane.errors import InvalidArgument
from protos.atelier.v1 import common_pb2, control_plane_pb2


@given(st.text(max_size=80))
def test_any_string_is_a_uuid_or_invalid_argument_naming_the_field(value: str) -> None:
    try:
        assert isinstance(parse_uuid("account_id", value), UUID)
    except InvalidArgument as error:
        assert error.field == "account_id"


@given(st.text(max_size=20))
def test_any_string_is_a_birth_date_or_invalid_argument(value: str) -> None:
    try:
        parsed = parse_birth_date(value)
        assert parsed is None or isinstance(parsed, date)
    except InvalidArgument as error:
        assert error.field == "birth_date"


@pytest.mark.parametrize("value", ["19900517", "1990-5-17", "1990-02-30", "1990-05-17T00:00"])
def test_only_real_yyyy_mm_dd_dates_are_birth_dates(value: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_birth_date(value)


def test_unspecified_enum_takes_the_default_and_unknown_numbers_are_named() -> None:
    assert parse_enum("tier", 0, control_plane_pb2.Tier, TIER_FROM_PB, Tier.FREE) is Tier.FREE
    with pytest.raises(InvalidArgument, match="TIER_FREE, TIER_PREMIUM"):
        parse_enum("tier", 9, control_plane_pb2.Tier, TIER_FROM_PB, Tier.FREE)


def test_page_size_zero_means_the_default_and_above_the_maximum_is_invalid() -> None:
    assert parse_page_size(0, default=20, maximum=100) == 20
    assert parse_page_size(100, default=20, maximum=100) == 100
    with pytest.raises(InvalidArgument, match="page_size"):
        parse_page_size(101, default=20, maximum=100)


def test_generation_parameters_survive_the_json_round_trip() -> None:
    parameters = common_pb2.GenerationParameters(
        model="tiny-sd", width=64, height=64, steps=20, guidance_scale=7.5, seed=2**63 + 5, scheduler="Euler"
    )
    assert parameters_from_dict(parameters_to_dict(parameters)) == parameters
    assert parameters_from_dict({"model": "x", "added_in_a_later_version": 1}).model == "x"
