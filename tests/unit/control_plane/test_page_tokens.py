"""Page tokens: they round-trip, bind to their listing and account, and reject anything else."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.content import ContentCursor
from control_plane.entrypoints.page_tokens import (
    decode_content_token,
    decode_ledger_token,
    encode_content_token,
    encode_ledger_token,
)
from control_plane.errors import InvalidArgument

ACCOUNT = UUID("0b9f6c1e-6f1a-4a4e-9d1b-2f7c3d1c9a10")


def test_tokens_round_trip() -> None:
    cursor = ContentCursor(datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC), uuid4())
    assert decode_content_token(encode_content_token(ACCOUNT, cursor), ACCOUNT) == cursor
    assert decode_ledger_token(encode_ledger_token(ACCOUNT, 42), ACCOUNT) == 42


def test_an_empty_token_means_the_first_page() -> None:
    assert decode_content_token("", ACCOUNT) is None
    assert decode_ledger_token("", ACCOUNT) is None


def test_a_token_is_bound_to_its_account_and_listing() -> None:
    ledger_token = encode_ledger_token(ACCOUNT, 42)
    with pytest.raises(InvalidArgument):
        decode_ledger_token(ledger_token, uuid4())
    with pytest.raises(InvalidArgument):
        decode_content_token(ledger_token, ACCOUNT)


@given(st.text(max_size=600))
def test_any_string_is_either_a_token_or_invalid_argument(token: str) -> None:
    for decode in (decode_content_token, decode_ledger_token):
        try:
            decode(token, ACCOUNT)
        except InvalidArgument as error:
            assert error.field == "page_token"
