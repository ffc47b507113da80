"""Fuzzing Inference through the real cluster: Serve's gRPC proxy, the gateway, the control plane.

A smaller budget than tests/fuzz (every valid Generate costs model time, so denoising steps
and image sizes only take tiny valid values or invalid ones). Requests come from the operator's
key, a key of another tenant, a key without the generate scope, and no or forged keys. Every
answer must be a documented code with a clean message; a refused request must leave every
balance as it was (nothing held, nothing charged); a successful one charges exactly its
`credits_charged` to an account of the caller's tenant. Generating on another tenant's
account is refused like generating on a guessed one, and charges nothing.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from atelier.settings import ClusterSettings
from control_plane.api_keys import ensure_operator_key
from control_plane.db.embedded import EmbeddedPostgres
from control_plane.db.pool import open_pool
from inference.grpc_proxy import UNDECODABLE_DETAILS
from protos.atelier.v1 import control_plane_pb2, inference_pb2
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from protos.atelier.v1.inference_pb2_grpc import InferenceStub
from tests.fuzz._oracle import FORBIDDEN_IN_DETAILS, MAX_DETAILS_CHARS
from tests.fuzz._strategies import MessageStrategies

pytestmark = pytest.mark.fuzz

Code = grpc.StatusCode
Metadata = tuple[tuple[str, str], ...]

ALLOWED = frozenset(
    {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
        Code.RESOURCE_EXHAUSTED,
        Code.FAILED_PRECONDITION,
    }
)
"""inference.proto's documented codes (UNAVAILABLE and DEADLINE_EXCEEDED excluded: nothing overloads here)."""

CASES: Counter[str] = Counter()
GENERATE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].methods_by_name["Generate"].input_type

# Only tiny valid generations (2 steps, 64 px, one image) or values the gateway must refuse.
CHEAP = {
    "steps": [1, 2, 0, 51, 151, 2**32 - 1],
    "width": [64, 0, 63, 65, 520, 2**32 - 1],
    "height": [64, 0, 7, 4096],
    "num_images": [1, 0, 9, 2**32 - 1],
    "preview_every_n_steps": [0, 1, 151, 2**32 - 1],
}
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@dataclass(frozen=True)
class Party:
    """A tenant's key and accounts in the fuzzed cluster."""

    metadata: Metadata
    accounts: list[str]


@pytest.fixture(scope="module")
def parties(
    cluster: object,
    cluster_settings: ClusterSettings,
    control_plane: ControlPlaneStub,
    operator_metadata: Metadata,
) -> dict[str, Party]:
    """The operator's tenant and another one, two funded accounts each, and a read-only key."""
    url = cluster_settings.database_url or EmbeddedPostgres(cluster_settings.home.resolve() / "postgres").url()
    assert url is not None
    with open_pool(url, min_size=1, max_size=2) as pool:
        _, secret = ensure_operator_key(pool, f"fuzz stranger {uuid.uuid4().hex[:8]}")
    assert secret is not None
    stranger: Metadata = (("authorization", f"Bearer {secret}"),)

    def accounts(metadata: Metadata) -> list[str]:
        return [
            control_plane.CreateAccount(
                control_plane_pb2.CreateAccountRequest(birth_date="1990-01-01", initial_credits=40), metadata=metadata
            ).account.account_id
            for _ in range(2)
        ]

    reader = control_plane.CreateApiKey(
        control_plane_pb2.CreateApiKeyRequest(name="fuzz reader", scopes=[control_plane_pb2.SCOPE_READ]),
        metadata=operator_metadata,
    ).secret
    own = accounts(operator_metadata)
    return {
        "operator": Party(operator_metadata, own),
        "stranger": Party(stranger, accounts(stranger)),
        "reader": Party((("authorization", f"Bearer {reader}"),), own),
        "none": Party((), []),
        "forged": Party((("authorization", "Bearer atk_ak_0123456789abcdef_" + "A" * 43),), []),
    }


def _balances(control_plane: ControlPlaneStub, parties: dict[str, Party]) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for name in ("operator", "stranger"):
        for account in parties[name].accounts:
            balance = control_plane.GetBalance(
                control_plane_pb2.GetBalanceRequest(account_id=account), metadata=parties[name].metadata
            ).balance
            found[account] = (balance.total, balance.held)
    return found


def _check_details(method: str, code: Code, details: str) -> None:
    assert code in ALLOWED, f"{method} answered {code.name}: {details!r}"
    if code != Code.OK:
        assert details and "\n" not in details, f"{method}: {details!r}"
        assert not FORBIDDEN_IN_DETAILS.search(details), f"{method} leaked internals: {details!r}"
        assert len(details) <= MAX_DETAILS_CHARS, f"{method} sent {len(details)} chars of details"


def _generate_once(
    method: str, inference: InferenceStub, request: inference_pb2.GenerateRequest, metadata: Metadata
) -> tuple[Code, str, int]:
    """Calls Generate or GenerateStream; returns the code, details and credits charged."""
    try:
        if method == "Generate":
            response = inference.Generate(request, metadata=metadata, timeout=180)
            return Code.OK, "", response.credits_charged
        charged = 0
        for message in inference.GenerateStream(request, metadata=metadata, timeout=180):
            if message.HasField("result"):
                charged = message.result.credits_charged
        return Code.OK, "", charged
    except grpc.RpcError as error:
        return error.code(), error.details() or "", 0


def _strategies(parties: dict[str, Party]) -> MessageStrategies:
    """Generic strings and numbers elsewhere; ids, prompts and sizes mostly near-valid, so a fair
    share of requests gets past validation to the control plane (and some to the model)."""
    accounts = parties["operator"].accounts + parties["stranger"].accounts
    return MessageStrategies(
        {"model": ["", "tiny-sd", "tiny-sd ", "TINY-SD"], "guidance_scale": [0.0, 7.5]},
        only={
            **CHEAP,
            "account_id": [*accounts, *accounts, str(uuid.uuid4()), "not-a-uuid", ""],
            "prompt": ["a red kite", "a kite at dusk", "a gore scene", " ", "p" * 2001, "é" * 2000],
        },
    )


@pytest.mark.parametrize("method", ["Generate", "GenerateStream"])
def test_any_generate_request_gets_a_documented_answer_and_refusals_charge_nothing(
    method: str, inference: InferenceStub, control_plane: ControlPlaneStub, parties: dict[str, Party]
) -> None:
    owner = {account: name for name in ("operator", "stranger") for account in parties[name].accounts}
    codes: Counter[str] = Counter()

    valid = inference_pb2.GenerateRequest(account_id=parties["operator"].accounts[0], prompt="a kite", steps=1)

    @(settings(SETTINGS, max_examples=30 if method == "Generate" else 15))
    @given(caller=st.sampled_from(sorted(parties)), request=_strategies(parties).message(GENERATE))
    @example(caller="operator", request=valid)
    @example(caller="stranger", request=valid)
    def fuzz(caller: str, request: inference_pb2.GenerateRequest) -> None:
        CASES[method] += 1
        before = _balances(control_plane, parties)
        code, details, charged = _generate_once(method, inference, request, parties[caller].metadata)
        _check_details(method, code, details)
        codes[code.name] += 1
        after = _balances(control_plane, parties)
        if code != Code.OK:
            assert after == before, f"{method} was refused ({code.name}: {details!r}) but balances changed"
            if caller in ("none", "forged"):
                assert code in (Code.UNAUTHENTICATED, Code.INVALID_ARGUMENT, Code.NOT_FOUND), code
            return
        assert caller in ("operator", "stranger"), f"{method} succeeded for the {caller} key"
        account = request.account_id
        assert owner.get(account) == caller, f"{method} charged an account of another tenant"
        expected = {**before, account: (before[account][0] - charged, 0)}
        assert charged >= 1 and after == expected

    fuzz()
    print(f"{method}: {sum(codes.values())} cases, codes {dict(codes)}")
    assert codes["OK"] >= 1 and len(codes) >= 3, codes


def test_generating_on_another_tenants_account_is_refused_like_a_guessed_id_and_charges_nothing(
    inference: InferenceStub, control_plane: ControlPlaneStub, parties: dict[str, Party]
) -> None:
    attacker = parties["stranger"]
    for victim_account in parties["operator"].accounts:
        before = _balances(control_plane, parties)
        answers = []
        for account in (victim_account, str(uuid.uuid4())):
            request = inference_pb2.GenerateRequest(account_id=account, prompt="a red kite", steps=1, width=64)
            code, details, _ = _generate_once("Generate", inference, request, attacker.metadata)
            answers.append((code, details.replace(account, "<id>")))
        assert answers[0] == answers[1], answers
        assert answers[0][0] in (Code.NOT_FOUND, Code.PERMISSION_DENIED), answers
        assert _balances(control_plane, parties) == before


def test_list_models_answers_any_caller_and_malformed_bytes_are_refused_cleanly(
    cluster: object, parties: dict[str, Party], cluster_settings: ClusterSettings
) -> None:
    from atelier.state import ClusterState

    state = ClusterState.load(cluster_settings.home.resolve())
    assert state is not None
    with grpc.insecure_channel(state.serve_grpc_address) as channel:
        for party in parties.values():
            models = InferenceStub(channel).ListModels(inference_pb2.ListModelsRequest(), metadata=party.metadata)
            assert models.models
        generate = channel.unary_unary("/atelier.v1.Inference/Generate")
        stream = channel.unary_stream("/atelier.v1.Inference/GenerateStream")
        for junk in (b"\x00", b"\x0a\x05ab", b"\x1a\x03\xff\xfe\xfd", b"\x08" + b"\xff" * 11, b"\x4b" * 300):
            for call in (generate, lambda *a, **k: list(stream(*a, **k))):
                CASES["malformed bytes"] += 1
                with pytest.raises(grpc.RpcError) as caught:
                    call(junk, metadata=parties["operator"].metadata, timeout=60)
                assert caught.value.code() == Code.INVALID_ARGUMENT, caught.value.details()
                assert caught.value.details() == UNDECODABLE_DETAILS


@pytest.fixture(scope="module", autouse=True)
def _report_cases() -> Iterator[None]:
    yield
    print(f"inference fuzz cases: {dict(CASES)} total {sum(CASES.values())}")
