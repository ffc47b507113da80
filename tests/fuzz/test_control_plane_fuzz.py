"""Property-based fuzzing of every ControlPlane and TrainingData RPC on the real server.

For each RPC of the services' descriptors, hypothesis builds request messages field by field
(`_strategies`) and calls with one of: an admin key of tenant a or of tenant b, a key of a
scope too narrow for the RPC, a key of exactly the scope it needs, no key, or a forged key.
A second test sends bytes that are not a valid request at all. `_oracle` judges every answer.

Budget: `ATELIER_FUZZ_EXAMPLES` cases per RPC and kind (default below, sized so the package
runs in about two minutes on a 2-core CI box); `ATELIER_FUZZ_EXPLORE=1` draws new cases each
run instead of the same derandomized ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz._oracle import CASES, Fingerprints, Outcome, call, changed, check_answer, check_no_leak
from tests.fuzz._rpcs import ENTRIES, Rpc, fuzzed_rpcs, method_names, raw_unary, unary
from tests.fuzz._strategies import MessageStrategies
from tests.fuzz._world import World, hints

EXAMPLES = int(os.environ.get("ATELIER_FUZZ_EXAMPLES", "40"))
EXPLORE = os.environ.get("ATELIER_FUZZ_EXPLORE", "") == "1"

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not EXPLORE,
    database=None if not EXPLORE else settings.default.database,
    # One world per test, shared by its examples on purpose: state accumulates as it would.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

RPCS = fuzzed_rpcs()


@dataclass(frozen=True)
class CallerSpec:
    """Who calls: metadata, the tenant the key belongs to, and the one code it must get (if any)."""

    label: str
    metadata: tuple[tuple[str, str], ...]
    tenant: str | None
    must_answer: grpc.StatusCode | None


FORGED_HEADERS: tuple[tuple[tuple[str, str], ...], ...] = (
    (),
    (("authorization", "Bearer"),),
    (("authorization", "Bearer "),),
    (("authorization", "Basic dXNlcjpwYXNz"),),
    (("authorization", "Bearer atk_ak_0123456789abcdef_" + "A" * 43),),
    (("authorization", "Bearer atk_ak_" + "z" * 16 + "_x"),),
    (("authorization", "Bearer ' OR 1=1 --"),),
    (("authorization", "Bearer " + "k" * 4000),),
    (("authorization", "BEARER  nothing"),),
    (("x-api-key", "atk_ak_0123456789abcdef_x"),),
)


def callers(world: World, target: Rpc) -> list[CallerSpec]:
    """Every kind of caller for `target`."""
    specs: list[CallerSpec] = []
    scope = target.entry.scope
    for name, tenant in world.tenants.items():
        specs.append(CallerSpec(f"admin of {name}", tenant.admin.metadata, name, None))
    a = world.tenants["a"]
    for scope_name, secret in a.scoped.items():
        allowed = scope is None or scope.value == scope_name
        md = (("authorization", f"Bearer {secret}"),)
        specs.append(
            CallerSpec(f"{scope_name} key of a", md, "a", None if allowed else grpc.StatusCode.PERMISSION_DENIED)
        )
    for index, metadata in enumerate(FORGED_HEADERS):
        specs.append(CallerSpec(f"forged key #{index}", metadata, None, grpc.StatusCode.UNAUTHENTICATED))
    return specs


def caller_strategy(specs: list[CallerSpec]) -> st.SearchStrategy[CallerSpec]:
    """Half admins (the callers that get past authentication into the domain code), a quarter
    narrower keys, a quarter missing or forged keys."""
    admins = st.sampled_from([s for s in specs if s.label.startswith("admin")])
    scoped = st.sampled_from([s for s in specs if s.label.endswith("key of a")])
    forged = st.sampled_from([s for s in specs if s.tenant is None])
    return st.one_of(admins, admins, scoped, forged)


def judge(
    target: Rpc,
    world: World,
    fingerprints: Fingerprints,
    caller: CallerSpec,
    send: grpc.UnaryUnaryMultiCallable,
    request: object,
    request_bytes: bytes,
    refused_must_be: grpc.StatusCode | None = None,
) -> Outcome:
    """Calls once and checks the answer, the database afterwards and the other tenant's data."""
    victim = world.other(caller.tenant) if caller.tenant else None
    before = fingerprints.everything()
    victim_before = fingerprints.tenant(victim.tenant_id) if victim else {}
    outcome = call(send, request, caller.metadata)
    check_answer(target.name, target.entry, outcome)
    if caller.must_answer is not None:
        assert outcome.code == caller.must_answer, (
            f"{target.name} with the {caller.label} answered {outcome.code.name}, not {caller.must_answer.name}:"
            f" {outcome.details!r}"
        )
    if refused_must_be is not None and caller.must_answer is None:
        assert outcome.code == refused_must_be, f"{target.name}: {outcome.code.name} {outcome.details!r}"
    if outcome.code != grpc.StatusCode.OK:
        allowed = target.entry.writes_when_refused if outcome.code == grpc.StatusCode.FAILED_PRECONDITION else set()
        stray = changed(before, fingerprints.everything()) - allowed
        assert not stray, f"{target.name} refused ({outcome.code.name}) but changed {sorted(stray)}"
    if victim is not None:
        touched = changed(victim_before, fingerprints.tenant(victim.tenant_id)) - target.entry.global_tables
        assert not touched, f"{target.name} by the {caller.label} changed tenant {victim.name}'s {sorted(touched)}"
        check_no_leak(target.name, outcome, victim.secrets_of_data(), request_bytes)
    return outcome


def test_every_rpc_in_the_descriptors_has_a_fuzz_entry() -> None:
    declared = set(method_names())
    missing = sorted(declared - ENTRIES.keys())
    assert not missing, f"add a line to tests/fuzz/_rpcs.py ENTRIES for each of {missing}"
    stale = sorted(ENTRIES.keys() - declared)
    assert not stale, f"ENTRIES names RPCs the descriptors no longer declare: {stale}"


@pytest.mark.parametrize("target", RPCS, ids=[r.name for r in RPCS])
def test_any_request_message_gets_a_documented_answer(
    target: Rpc, world: World, channel: grpc.Channel, fingerprints: Fingerprints
) -> None:
    strategies = MessageStrategies(hints(world))
    send = unary(channel, target)
    specs = callers(world, target)
    codes: set[grpc.StatusCode] = set()

    @FUZZ_SETTINGS
    @given(caller=caller_strategy(specs), request=strategies.message(target.method.input_type))
    def fuzz(caller: CallerSpec, request: object) -> None:
        CASES[(target.method.containing_service.name, "messages")] += 1
        raw = request.SerializeToString()  # type: ignore[attr-defined]
        codes.add(judge(target, world, fingerprints, caller, send, request, raw).code)

    fuzz()
    # The world's valid ids make some calls succeed; a fuzzer that only ever hits validation
    # errors would test little.
    assert codes - {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}, codes


def _wire_junk(target: Rpc) -> st.SearchStrategy[bytes]:
    """Bytes that are not a valid request of `target`, or only barely are."""
    numbers = [f.number for f in target.method.input_type.fields] or [1]

    def tag(number: int, wire_type: int) -> bytes:
        return _varint((number << 3) | wire_type)

    field = st.sampled_from(numbers)
    crafted = st.one_of(
        # A varint that never ends.
        field.map(lambda n: tag(n, 0) + b"\xff" * 11),
        # A length past the end of the message.
        field.map(lambda n: tag(n, 2) + _varint(1000) + b"abc"),
        # Invalid UTF-8 where strings are expected.
        field.map(lambda n: tag(n, 2) + b"\x03\xff\xfe\xfd"),
        # Every wire type on every field, including the deprecated groups.
        st.builds(
            lambda n, w: tag(n, w) + b"\x01\x02\x03\x04\x05\x06\x07\x08",
            field,
            st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]),
        ),
        # Field number 0 and the largest field number.
        st.sampled_from([b"\x00\x01", tag(2**29 - 1, 0) + b"\x01"]),
        # Nested groups deeper than any parser allows.
        st.integers(min_value=1, max_value=200).map(lambda depth: tag(1, 3) * depth),
        st.integers(min_value=1, max_value=2000).map(lambda depth: (tag(numbers[0], 2) + b"\x7f") * depth),
    )
    return st.one_of(st.binary(max_size=300), crafted, st.lists(crafted, min_size=2, max_size=5).map(b"".join))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@pytest.mark.parametrize("target", RPCS, ids=[r.name for r in RPCS])
def test_malformed_request_bytes_get_a_documented_answer(
    target: Rpc, world: World, channel: grpc.Channel, fingerprints: Fingerprints
) -> None:
    send = raw_unary(channel, target)
    specs = callers(world, target)

    @FUZZ_SETTINGS
    @given(caller=caller_strategy(specs), junk=_wire_junk(target))
    def fuzz(caller: CallerSpec, junk: bytes) -> None:
        CASES[(target.method.containing_service.name, "bytes")] += 1
        try:
            target.request_class.FromString(junk)
        except Exception:
            undecodable = True
        else:
            undecodable = False
        # Bytes that do not decode are refused as INVALID_ARGUMENT whoever calls: the server
        # cannot know the fields, so it cannot even start to authenticate the request.
        spec = CallerSpec(caller.label, caller.metadata, caller.tenant, None) if undecodable else caller
        judge(
            target,
            world,
            fingerprints,
            spec,
            send,
            junk,
            junk,
            refused_must_be=grpc.StatusCode.INVALID_ARGUMENT if undecodable else None,
        )

    fuzz()
