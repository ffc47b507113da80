"""Who may call what: API keys, scopes, tenant isolation, and how bad input is answered."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from control_plane.api_keys import ensure_operator_key
from control_plane.db.pool import Pool
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._support import CLOCK_START, Caller, bearer, png_bytes


class TestAuthentication:
    @pytest.mark.parametrize(
        "metadata",
        [
            (),
            (("authorization", "Basic dXNlcjpwYXNz"),),
            (("authorization", "Bearer not-a-key"),),
            (("authorization", "Bearer atk_ak_0123456789abcdef_" + "A" * 43),),
        ],
        ids=["no metadata", "wrong scheme", "malformed key", "unknown key"],
    )
    def test_a_missing_or_unknown_key_is_unauthenticated(
        self, stub: ControlPlaneStub, operator: Caller, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            stub.WhoAmI(pb.WhoAmIRequest(), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    def test_a_key_with_a_wrong_secret_is_unauthenticated(self, stub: ControlPlaneStub, operator: Caller) -> None:
        forged = operator.secret[:-4] + ("AAAA" if not operator.secret.endswith("AAAA") else "BBBB")
        with pytest.raises(grpc.RpcError) as caught:
            stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(forged))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    def test_who_am_i_describes_the_calling_key(self, stub: ControlPlaneStub, operator: Caller) -> None:
        key = stub.WhoAmI(pb.WhoAmIRequest(), metadata=operator.metadata).key
        assert key.key_id == operator.principal.key_id
        assert key.tenant_id == str(operator.principal.tenant_id)
        assert list(key.scopes) == [pb.SCOPE_ADMIN]
        assert key.name == "operator"

    def test_created_keys_authenticate_with_their_scopes(self, stub: ControlPlaneStub, operator: Caller) -> None:
        created = stub.CreateApiKey(
            pb.CreateApiKeyRequest(name="gateway", scopes=[pb.SCOPE_READ, pb.SCOPE_GENERATE, pb.SCOPE_READ]),
            metadata=operator.metadata,
        )
        assert created.secret.startswith(f"atk_{created.key.key_id}_")
        key = stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(created.secret)).key
        assert sorted(key.scopes) == [pb.SCOPE_GENERATE, pb.SCOPE_READ]
        assert key.tenant_id == str(operator.principal.tenant_id)

    def test_the_operator_key_is_created_once_and_reused(self, pool: Pool, operator: Caller) -> None:
        principal, secret = ensure_operator_key(pool, "test", now=CLOCK_START)
        assert secret is None
        assert principal.key_id == operator.principal.key_id

    def test_launchers_racing_to_bootstrap_create_one_tenant_and_one_key(self, pool: Pool) -> None:
        with ThreadPoolExecutor(max_workers=6) as executor:
            results = list(executor.map(lambda _: ensure_operator_key(pool, "raced", now=CLOCK_START), range(6)))
        assert len({principal.key_id for principal, _ in results}) == 1
        assert sum(secret is not None for _, secret in results) == 1
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM tenants WHERE name = 'raced'").fetchone() == (1,)


class TestScopes:
    def test_a_read_only_key_cannot_grant_credits(
        self, stub: ControlPlaneStub, make_key: Callable[..., str], make_account: Callable[..., str]
    ) -> None:
        account_id = make_account()
        reader = make_key(pb.SCOPE_READ, pb.SCOPE_ACT_FOR_ANY)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GrantCredits(pb.GrantCreditsRequest(account_id=account_id, amount=5), metadata=bearer(reader))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'admin' scope" in caught.value.details()
        # ...but may read.
        balance = stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=bearer(reader)).balance
        assert balance.total == 0

    def test_a_generate_key_may_reserve_but_not_read(
        self, stub: ControlPlaneStub, make_key: Callable[..., str], make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=5)
        generator = make_key(pb.SCOPE_GENERATE, pb.SCOPE_ACT_FOR_ANY)
        stub.ReserveCredits(pb.ReserveCreditsRequest(account_id=account_id, amount=1), metadata=bearer(generator))
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=bearer(generator))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


class TestTenantIsolation:
    @pytest.fixture
    def stranger(self, pool: Pool) -> Caller:
        principal, secret = ensure_operator_key(pool, "another tenant", now=CLOCK_START)
        assert secret is not None
        return Caller(principal, secret)

    def test_another_tenants_account_is_not_found(
        self, stub: ControlPlaneStub, stranger: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=10)
        calls: list[tuple[Any, Any]] = [
            (stub.GetAccount, pb.GetAccountRequest(account_id=account_id)),
            (stub.GetBalance, pb.GetBalanceRequest(account_id=account_id)),
            (stub.ListLedger, pb.ListLedgerRequest(account_id=account_id)),
            (stub.GrantCredits, pb.GrantCreditsRequest(account_id=account_id, amount=1)),
            (stub.ReserveCredits, pb.ReserveCreditsRequest(account_id=account_id, amount=1)),
            (stub.ListContent, pb.ListContentRequest(account_id=account_id)),
        ]
        for method, request in calls:
            with pytest.raises(grpc.RpcError) as caught:
                method(request, metadata=stranger.metadata)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, method

    def test_another_tenants_reservation_and_content_are_not_found(
        self, stub: ControlPlaneStub, operator: Caller, stranger: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=10)
        reservation = stub.ReserveCredits(
            pb.ReserveCreditsRequest(account_id=account_id, amount=1), metadata=operator.metadata
        ).reservation
        item = pb.NewContent(kind=pb.CONTENT_KIND_GENERATED, media_type="image/png", data=png_bytes())
        content = stub.StoreContent(
            pb.StoreContentRequest(account_id=account_id, items=[item]), metadata=operator.metadata
        ).contents[0]
        calls: list[tuple[Any, Any]] = [
            (stub.CommitReservation, pb.CommitReservationRequest(reservation_id=reservation.reservation_id)),
            (stub.ReleaseReservation, pb.ReleaseReservationRequest(reservation_id=reservation.reservation_id)),
            (stub.GetContent, pb.GetContentRequest(content_id=content.content_id)),
        ]
        for method, request in calls:
            with pytest.raises(grpc.RpcError) as caught:
                method(request, metadata=stranger.metadata)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, method


ACCOUNT = "<account>"
_LONG = "x" * 201
_ITEM = {"kind": pb.CONTENT_KIND_GENERATED, "media_type": "image/png", "data": png_bytes()}

INVALID_REQUESTS: list[tuple[str, Any, str]] = [
    ("GetAccount", pb.GetAccountRequest(account_id="not-a-uuid"), "account_id"),
    ("GetAccount", pb.GetAccountRequest(), "account_id"),
    ("CreateAccount", pb.CreateAccountRequest(), "birth_date"),
    ("CreateAccount", pb.CreateAccountRequest(birth_date="1990-13-01"), "birth_date"),
    ("CreateAccount", pb.CreateAccountRequest(birth_date="17/05/1990"), "birth_date"),
    ("CreateAccount", pb.CreateAccountRequest(birth_date="2999-01-01"), "birth_date"),
    ("CreateAccount", pb.CreateAccountRequest(age_attested=151), "age_attested"),
    ("CreateAccount", pb.CreateAccountRequest(birth_date="1990-01-01", tier=99), "tier"),  # type: ignore[arg-type]
    ("CreateAccount", pb.CreateAccountRequest(birth_date="1990-01-01", initial_credits=10**12 + 1), "initial_credits"),
    ("CreateApiKey", pb.CreateApiKeyRequest(name="", scopes=[pb.SCOPE_READ]), "name"),
    ("CreateApiKey", pb.CreateApiKeyRequest(name="k"), "scopes"),
    ("CreateApiKey", pb.CreateApiKeyRequest(name="k", scopes=[pb.SCOPE_UNSPECIFIED]), "scopes[0]"),
    ("GrantCredits", pb.GrantCreditsRequest(account_id=ACCOUNT), "amount"),
    ("GrantCredits", pb.GrantCreditsRequest(account_id=ACCOUNT, amount=10**12 + 1), "amount"),
    ("GrantCredits", pb.GrantCreditsRequest(account_id=ACCOUNT, amount=1, reason=_LONG), "reason"),
    ("ReserveCredits", pb.ReserveCreditsRequest(account_id=ACCOUNT, amount=10**9 + 1), "amount"),
    ("ReserveCredits", pb.ReserveCreditsRequest(account_id=ACCOUNT, amount=1, ttl_seconds=3601), "ttl_seconds"),
    ("ReserveCredits", pb.ReserveCreditsRequest(account_id=ACCOUNT, amount=1, purpose=_LONG), "purpose"),
    ("CommitReservation", pb.CommitReservationRequest(reservation_id="123"), "reservation_id"),
    ("ReleaseReservation", pb.ReleaseReservationRequest(), "reservation_id"),
    ("ListLedger", pb.ListLedgerRequest(account_id=ACCOUNT, page_size=501), "page_size"),
    ("ListLedger", pb.ListLedgerRequest(account_id=ACCOUNT, page_token="garbage!"), "page_token"),
    ("ListContent", pb.ListContentRequest(account_id=ACCOUNT, page_size=101), "page_size"),
    ("GetContent", pb.GetContentRequest(content_id="../../etc/passwd"), "content_id"),
    ("StoreContent", pb.StoreContentRequest(account_id=ACCOUNT), "items"),
    (
        "StoreContent",
        pb.StoreContentRequest(account_id=ACCOUNT, items=[pb.NewContent(**{**_ITEM, "media_type": "image/jpeg"})]),
        "items[0].media_type",
    ),
    (
        "StoreContent",
        pb.StoreContentRequest(account_id=ACCOUNT, items=[pb.NewContent(**{**_ITEM, "kind": 0})]),
        "items[0].kind",
    ),
    (
        "StoreContent",
        pb.StoreContentRequest(account_id=ACCOUNT, items=[pb.NewContent(**_ITEM, prompt="p" * 2001)]),
        "items[0].prompt",
    ),
    (
        "StoreContent",
        pb.StoreContentRequest(account_id=ACCOUNT, items=[pb.NewContent(**_ITEM, visibility=7)]),  # type: ignore[arg-type]
        "items[0].visibility",
    ),
    (
        "StoreContent",
        pb.StoreContentRequest(account_id=ACCOUNT, items=[pb.NewContent(**_ITEM)], commit_reservation_id="nope"),
        "commit_reservation_id",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    INVALID_REQUESTS,
    ids=[f"{method}-{field}-{i}" for i, (method, _, field) in enumerate(INVALID_REQUESTS)],
)
def test_invalid_input_is_invalid_argument_naming_the_field_without_a_traceback(
    stub: ControlPlaneStub,
    operator: Caller,
    make_account: Callable[..., str],
    method: str,
    request_message: Any,
    field: str,
) -> None:
    request = type(request_message)()
    request.CopyFrom(request_message)
    if getattr(request, "account_id", None) == ACCOUNT:
        request.account_id = make_account(credits=5)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(request, metadata=operator.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details()
    assert details.startswith(f"{field}: ")
    assert "Traceback" not in details
    assert 'File "' not in details


def test_visibility_unspecified_takes_the_account_default(
    stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
) -> None:
    account_id = make_account(default_visibility=common_pb2.VISIBILITY_PUBLIC)
    stored = stub.StoreContent(
        pb.StoreContentRequest(account_id=account_id, items=[pb.NewContent(**_ITEM)]), metadata=operator.metadata
    )
    assert stored.contents[0].visibility == common_pb2.VISIBILITY_PUBLIC
