"""Hypothesis strategies built from protobuf descriptors: any request message, field by field.

Generic, so a new RPC (or a new field) is fuzzed without writing a strategy for it: each field
gets values of its wire type at the edges (empty and huge strings, unicode, integer limits,
unknown enum numbers, NaN, nested and repeated messages), mixed with near-valid values the
caller supplies by field name (real ids of both tenants, real page tokens, a valid PNG), so
the fuzzer also gets past the first validation and into the domain code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from hypothesis import strategies as st

FD = pb_descriptor.FieldDescriptor

_INT_RANGES: dict[int, tuple[int, int]] = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}

BAD_UUIDS = (
    "not-a-uuid",
    "123",
    "../../etc/passwd",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "{123e4567-e89b-12d3-a456-426614174000}",
    "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
    "123e4567e89b12d3a456426614174000",
    "123E4567-E89B-12D3-A456-426614174000",
    " 123e4567-e89b-12d3-a456-426614174000",
    "123e4567-e89b-12d3-a456-426614174000\n",
    "123e4567-e89b-12d3-a456-42661417400g",
    "'; DROP TABLE accounts; --",
    "%s%s%s%n",
    "\x00",
    "١٢٣e4567-e89b-12d3-a456-426614174000",
)
"""UUID-shaped junk: braces, urn:, case, whitespace, SQL, format strings, NUL, unicode digits."""

_OMITTED = st.sampled_from((False, False, False, True))

HUGE_TEXT_CHARS = 70_000
"""Longer than every documented string limit (the largest is 2000) by far."""


def _text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=300),
        st.sampled_from(BAD_UUIDS),
        st.uuids().map(str),
        st.integers(min_value=1, max_value=HUGE_TEXT_CHARS).map(lambda n: "x" * n),
        st.sampled_from(("é" * 2001, "🎨" * 201, "a\u0000b", "\u202e" * 10, " " * 50, "YYYY-MM-DD")),
    )


def _integers(field_type: int) -> st.SearchStrategy[int]:
    low, high = _INT_RANGES[field_type]
    edges = sorted(
        {
            low,
            high,
            0,
            1,
            min(max(-1, low), high),
            2**31 - 1,
            2**31,
            2**32 - 1,
            10**9,
            10**9 + 1,
            10**12,
            10**12 + 1,
            150,
            151,
            3600,
            3601,
            100,
            101,
            500,
            501,
            1000,
            1001,
            10_000,
            10_001,
        }
    )
    return st.one_of(
        st.sampled_from([e for e in edges if low <= e <= high]),
        st.integers(min_value=low, max_value=high),
        st.integers(min_value=max(low, -5), max_value=min(high, 20)),
    )


def _floats(field_type: int) -> st.SearchStrategy[float]:
    width = 32 if field_type == FD.TYPE_FLOAT else 64
    return st.one_of(
        st.floats(width=width, allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -0.0, 1.0, 30.0, 30.5, -1.0]),
    )


def _bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=64), st.just(b""), st.just(b"\x89PNG\r\n\x1a\n"), st.binary(max_size=4096))


@dataclass(frozen=True)
class Derived:
    """A hint computed from the fields already set: fields are drawn in declaration order, so a
    page token can be forged for the account the request names. No candidates: a generic value."""

    candidates: Callable[[pb_message.Message], Sequence[Any]]


class MessageStrategies:
    """Builds strategies for messages of any descriptor, drawing near-valid values by field name.

    Args:
        hints: Field name -> values that may be valid for that field (ids of both tenants,
            tokens from real responses...). A field named in `hints` draws from them half
            the time.
        max_depth: How deep nested messages go.
        only: Field name -> the only values it may take, for fields whose other values cost
            too much to send (denoising steps and image sizes of real generations).
    """

    def __init__(
        self,
        hints: Mapping[str, Sequence[Any]],
        *,
        max_depth: int = 3,
        only: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        self._hints = {name: list(values) for name, values in hints.items() if values}
        self._only = {name: list(values) for name, values in (only or {}).items()}
        self._max_depth = max_depth

    def message(self, descriptor: pb_descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[pb_message.Message]:
        """Messages of `descriptor` with any subset of their fields set."""
        if not descriptor.fields:
            return st.just(message_factory.GetMessageClass(descriptor)())

        @st.composite
        def build(draw: st.DrawFn) -> pb_message.Message:
            message = message_factory.GetMessageClass(descriptor)()
            for field in descriptor.fields:
                # A field is omitted one time in four (not st.booleans(), which hypothesis
                # tilts towards True): requests then mostly get past "X is required".
                if draw(_OMITTED):
                    continue
                if field.is_repeated:
                    if field.message_type is not None and field.message_type.GetOptions().map_entry:
                        continue
                    values = draw(st.lists(self._value(field, depth), max_size=draw(st.sampled_from((3, 20)))))
                    target = getattr(message, field.name)
                    if field.type == FD.TYPE_MESSAGE:
                        for value in values:
                            target.add().CopyFrom(value)
                    else:
                        target.extend(values)
                elif field.type == FD.TYPE_MESSAGE:
                    getattr(message, field.name).CopyFrom(draw(self._value(field, depth)))
                else:
                    value = draw(self._value(field, depth))
                    if isinstance(value, Derived):
                        options = list(value.candidates(message))
                        value = draw(st.sampled_from(options) if options else self._generic(field, depth))
                    setattr(message, field.name, value)
            return message

        return build()

    def _value(self, field: pb_descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if field.name in self._only:
            return st.sampled_from(self._only[field.name])
        generic = self._generic(field, depth)
        hinted = [value for value in self._hints.get(field.name, ()) if _fits(field, value)]
        if not hinted:
            return generic
        # Half and half (not st.booleans(), which hypothesis tilts). Not st.one_of: it flattens the
        # generic one_of's branches beside the hints, which then came up one time in eight.
        hint = st.sampled_from(hinted)
        return st.sampled_from((False, True)).flatmap(lambda generic_one: generic if generic_one else hint)

    def _generic(self, field: pb_descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        kind = field.type
        if kind == FD.TYPE_STRING:
            return _text()
        if kind == FD.TYPE_BYTES:
            return _bytes()
        if kind == FD.TYPE_BOOL:
            return st.booleans()
        if kind in _INT_RANGES:
            return _integers(kind)
        if kind in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
            return _floats(kind)
        if kind == FD.TYPE_ENUM:
            # Proto3 enums are open: numbers the schema does not name arrive as they are.
            known = [value.number for value in field.enum_type.values]
            return st.one_of(st.sampled_from(known), st.integers(min_value=-(2**31), max_value=2**31 - 1))
        if kind == FD.TYPE_MESSAGE:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                return _timestamps(field.message_type)
            if depth >= self._max_depth:
                return st.just(message_factory.GetMessageClass(field.message_type)())
            return self.message(field.message_type, depth + 1)
        raise NotImplementedError(f"no strategy for field {field.full_name} of type {kind}")


def _fits(field: pb_descriptor.FieldDescriptor, value: Any) -> bool:
    """Whether a hint can be assigned to `field` (hints are by name; types differ between messages)."""
    kind = field.type
    if isinstance(value, Derived):
        return not field.is_repeated
    if kind == FD.TYPE_STRING:
        return isinstance(value, str)
    if kind == FD.TYPE_BYTES:
        return isinstance(value, bytes)
    if kind == FD.TYPE_MESSAGE:
        return isinstance(value, pb_message.Message) and value.DESCRIPTOR.full_name == field.message_type.full_name
    if kind == FD.TYPE_BOOL:
        return isinstance(value, bool)
    return isinstance(value, int) and not isinstance(value, bool)


def _timestamps(descriptor: pb_descriptor.Descriptor) -> st.SearchStrategy[pb_message.Message]:
    """Timestamps in and far out of the valid range (years 1..9999), nanos out of 0..999999999."""
    cls = message_factory.GetMessageClass(descriptor)
    seconds = st.one_of(
        st.integers(min_value=-62135596800, max_value=253402300799),
        st.sampled_from([0, -1, -62135596801, 253402300800, 2**63 - 1, -(2**63), 1772366400]),
    )
    nanos = st.one_of(st.just(0), st.integers(min_value=-(2**31), max_value=2**31 - 1))
    return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, nanos)
