"""Coverage-guided fuzzing (atheris) of the control plane's request parsers, in-process.

Not collected by pytest and not a dependency: the hypothesis suites in this package fuzz every
RPC end to end, where each case is a gRPC call and database round trips, so atheris' speed
buys little there. Here, without a server, it runs the pure parsers that turn request fields
into domain values (page tokens, cursors, UUIDs, dates, timestamps, bearer keys) a million
times a minute, and checks what the servicer relies on: a parser either returns a value the
database can take or raises `InvalidArgument` (a DomainError); anything else would reach the
caller as INTERNAL.

    pip install atheris   # 3.0.0 has a wheel for CPython 3.11 on x86-64 Linux
    PYTHONPATH=. python tests/fuzz/atheris_parsers.py -runs=200000
"""

from __future__ import annotations

import base64
import json
import sys
import uuid

import atheris

with atheris.instrument_imports():
    from google.protobuf.timestamp_pb2 import Timestamp

    from control_plane.entrypoints import convert
    from control_plane.entrypoints import page_tokens as tokens
    from control_plane.entrypoints.bearer import bearer_secret
    from control_plane.entrypoints.page_tokens import decode_removals_cursor
    from control_plane.errors import DomainError

ACCOUNT = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
BIGINT_MAX = 2**63 - 1
_LISTINGS = ("ledger", "audit", "content", "gallery")


def _token(fdp: atheris.FuzzedDataProvider) -> str:
    """A page token: sometimes raw text, mostly base64 of a JSON object with fuzzed values."""
    if fdp.ConsumeBool():
        return fdp.ConsumeUnicodeNoSurrogates(80)
    payload: dict[str, object] = {"l": _LISTINGS[fdp.ConsumeIntInRange(0, 3)], "a": str(ACCOUNT)}
    for key in ("e", "t", "c"):
        if fdp.ConsumeBool():
            text = fdp.ConsumeUnicodeNoSurrogates(40)
            try:
                payload[key] = json.loads(text)
            except ValueError:
                payload[key] = text
    raw = json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    choice = fdp.ConsumeIntInRange(0, 8)
    try:
        if choice == 0:
            entry = tokens.decode_ledger_token(_token(fdp), ACCOUNT)
            assert entry is None or 1 <= entry <= BIGINT_MAX, entry
        elif choice == 1:
            entry = tokens.decode_audit_token(_token(fdp), ACCOUNT)
            assert entry is None or 1 <= entry <= BIGINT_MAX, entry
        elif choice == 2:
            cursor = tokens.decode_content_token(_token(fdp), ACCOUNT)
            assert cursor is None or cursor.created_at.tzinfo is not None
        elif choice == 3:
            tokens.decode_gallery_token(_token(fdp), ACCOUNT)
        elif choice == 4:
            text = fdp.ConsumeUnicodeNoSurrogates(60)
            cursor_text = "removals:" + text if fdp.ConsumeBool() else text
            after = decode_removals_cursor(base64.urlsafe_b64encode(cursor_text.encode()).decode().rstrip("="))
            assert 0 <= after <= BIGINT_MAX, after
        elif choice == 5:
            convert.parse_uuid("id", fdp.ConsumeUnicodeNoSurrogates(50))
        elif choice == 6:
            convert.parse_birth_date(fdp.ConsumeUnicodeNoSurrogates(20))
        elif choice == 7:
            stamp = Timestamp(seconds=fdp.ConsumeIntInRange(-(2**63), BIGINT_MAX))
            stamp.nanos = fdp.ConsumeIntInRange(-(2**31), 2**31 - 1)
            convert.parse_timestamp("as_of", stamp)
        else:
            bearer_secret((("authorization", fdp.ConsumeUnicodeNoSurrogates(60)),))
    except DomainError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
