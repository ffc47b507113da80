"""Listing, rotating and revoking API keys over gRPC: scopes, tenants, grace periods, audit."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import grpc
import pytest

from control_plane.api_keys import ensure_operator_key
from control_plane.clock import ManualClock
from control_plane.db.pool import Pool
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._support import CLOCK_START, Caller, bearer, error_reason


def _key_id(secret: str) -> str:
    return secret.split("_")[1] + "_" + secret.split("_")[2]


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def _audit_actions(pool: Pool, key_id: str) -> list[str]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT action FROM audit_log WHERE target_type = 'api_key' AND target_id = %s ORDER BY id", (key_id,)
        ).fetchall()
    return [row[0] for row in rows]


class TestListApiKeys:
    def test_lists_the_tenants_keys_newest_first_with_revoked_ones(
        self, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str], clock: ManualClock
    ) -> None:
        clock.advance(timedelta(minutes=1))
        reader = make_key(pb.SCOPE_READ, name="reader")
        clock.advance(timedelta(minutes=1))
        generator = make_key(pb.SCOPE_GENERATE, name="generator")
        stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=_key_id(reader)), metadata=operator.metadata)

        keys = stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=operator.metadata).keys

        assert [k.name for k in keys] == ["generator", "reader", "operator"]
        assert [k.key_id for k in keys] == [_key_id(generator), _key_id(reader), operator.principal.key_id]
        assert [k.active for k in keys] == [True, False, True]
        assert keys[1].HasField("revoked_at") and not keys[0].HasField("revoked_at")
        assert keys[1].revoked_at.ToDatetime().replace(tzinfo=CLOCK_START.tzinfo) == clock.now()

    def test_pages_cover_every_key_once_even_with_equal_creation_times(
        self, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str]
    ) -> None:
        # The clock stands still, so all seven keys share created_at: the key id breaks ties.
        created = {_key_id(make_key(pb.SCOPE_READ, name=f"k{i}")) for i in range(6)} | {operator.principal.key_id}
        seen: list[str] = []
        token = ""
        for _ in range(10):
            page = stub.ListApiKeys(pb.ListApiKeysRequest(page_size=3, page_token=token), metadata=operator.metadata)
            assert len(page.keys) <= 3
            seen += [k.key_id for k in page.keys]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(created)

    def test_a_token_of_another_tenant_or_garbage_is_invalid(
        self, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str], pool: Pool
    ) -> None:
        make_key(pb.SCOPE_READ)
        token = stub.ListApiKeys(pb.ListApiKeysRequest(page_size=1), metadata=operator.metadata).next_page_token
        assert token
        _, secret = ensure_operator_key(pool, "other", now=CLOCK_START)
        assert secret is not None
        for bad in (token, "garbage!"):
            code = _code(lambda t=bad: stub.ListApiKeys(pb.ListApiKeysRequest(page_token=t), metadata=bearer(secret)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
        too_big = pb.ListApiKeysRequest(page_size=501)
        assert _code(lambda: stub.ListApiKeys(too_big, metadata=operator.metadata)) == grpc.StatusCode.INVALID_ARGUMENT

    def test_needs_the_admin_scope(self, stub: ControlPlaneStub, make_key: Callable[..., str]) -> None:
        reader = make_key(pb.SCOPE_READ, pb.SCOPE_GENERATE, pb.SCOPE_PRIVACY)
        calls: list[Callable[[], Any]] = [
            lambda: stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=bearer(reader)),
            lambda: stub.RotateApiKey(pb.RotateApiKeyRequest(key_id=_key_id(reader)), metadata=bearer(reader)),
            lambda: stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=_key_id(reader)), metadata=bearer(reader)),
        ]
        assert [_code(call) for call in calls] == [grpc.StatusCode.PERMISSION_DENIED] * 3


class TestRotateApiKey:
    def test_rotation_without_grace_swaps_the_secret_at_once(
        self, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str], pool: Pool
    ) -> None:
        old = make_key(pb.SCOPE_READ, pb.SCOPE_GENERATE, name="gateway")
        rotated = stub.RotateApiKey(pb.RotateApiKeyRequest(key_id=_key_id(old)), metadata=operator.metadata)

        assert rotated.key.name == "gateway"
        assert sorted(rotated.key.scopes) == [pb.SCOPE_GENERATE, pb.SCOPE_READ]
        assert rotated.key.key_id != _key_id(old) and rotated.secret.startswith(f"atk_{rotated.key.key_id}_")
        assert rotated.previous.replaced_by_key_id == rotated.key.key_id
        assert not rotated.previous.active and rotated.key.active
        assert _code(lambda: stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(old))) == grpc.StatusCode.UNAUTHENTICATED
        assert stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(rotated.secret)).key.key_id == rotated.key.key_id
        assert _audit_actions(pool, _key_id(old)) == ["api_key.create", "api_key.rotate"]
        assert _audit_actions(pool, rotated.key.key_id) == ["api_key.create"]

    def test_the_old_key_works_until_the_grace_period_ends(
        self, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str], clock: ManualClock
    ) -> None:
        old = make_key(pb.SCOPE_READ)
        request = pb.RotateApiKeyRequest(key_id=_key_id(old), grace_seconds=600)
        rotated = stub.RotateApiKey(request, metadata=operator.metadata)
        assert rotated.previous.active
        assert rotated.previous.revoked_at.ToDatetime().replace(tzinfo=CLOCK_START.tzinfo) == CLOCK_START + timedelta(
            seconds=600
        )

        clock.advance(timedelta(seconds=599))
        assert stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(old)).key.key_id == _key_id(old)
        clock.advance(timedelta(seconds=1))
        assert _code(lambda: stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(old))) == grpc.StatusCode.UNAUTHENTICATED
        assert stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(rotated.secret)).key.active

    def test_revoking_a_key_in_its_grace_period_ends_it_at_once(
        self, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str]
    ) -> None:
        old = make_key(pb.SCOPE_READ)
        request = pb.RotateApiKeyRequest(key_id=_key_id(old), grace_seconds=3600)
        stub.RotateApiKey(request, metadata=operator.metadata)
        revoked = stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=_key_id(old)), metadata=operator.metadata).key
        assert not revoked.active
        assert _code(lambda: stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(old))) == grpc.StatusCode.UNAUTHENTICATED

    def test_a_rotated_or_revoked_key_cannot_be_rotated(
        self, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str]
    ) -> None:
        rotated_secret = make_key(pb.SCOPE_READ)
        request = pb.RotateApiKeyRequest(key_id=_key_id(rotated_secret), grace_seconds=60)
        stub.RotateApiKey(request, metadata=operator.metadata)
        revoked_secret = make_key(pb.SCOPE_READ)
        stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=_key_id(revoked_secret)), metadata=operator.metadata)

        for secret, reason in ((rotated_secret, "API_KEY_ROTATED"), (revoked_secret, "API_KEY_REVOKED")):
            with pytest.raises(grpc.RpcError) as caught:
                stub.RotateApiKey(pb.RotateApiKeyRequest(key_id=_key_id(secret)), metadata=operator.metadata)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_reason(caught.value) == reason

    def test_concurrent_rotations_of_one_key_issue_one_successor(
        self, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str], pool: Pool
    ) -> None:
        old = make_key(pb.SCOPE_READ)

        def rotate(_: int) -> grpc.StatusCode:
            try:
                stub.RotateApiKey(pb.RotateApiKeyRequest(key_id=_key_id(old)), metadata=operator.metadata)
            except grpc.RpcError as error:
                return error.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        with ThreadPoolExecutor(max_workers=6) as executor:
            codes = list(executor.map(rotate, range(6)))
        assert sorted(codes, key=str) == sorted(
            [grpc.StatusCode.OK] + [grpc.StatusCode.FAILED_PRECONDITION] * 5, key=str
        )
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (3,)  # operator, old, one new

    @pytest.mark.parametrize("key_id", ["", "ak_nothex", "ak_0123456789abcdef0"])
    def test_a_malformed_key_id_is_invalid(self, stub: ControlPlaneStub, operator: Caller, key_id: str) -> None:
        for call in (
            lambda: stub.RotateApiKey(pb.RotateApiKeyRequest(key_id=key_id), metadata=operator.metadata),
            lambda: stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=key_id), metadata=operator.metadata),
        ):
            assert _code(call) == grpc.StatusCode.INVALID_ARGUMENT

    def test_a_grace_period_over_a_day_is_invalid(
        self, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str]
    ) -> None:
        secret = make_key(pb.SCOPE_READ)
        with pytest.raises(grpc.RpcError) as caught:
            request = pb.RotateApiKeyRequest(key_id=_key_id(secret), grace_seconds=86401)
            stub.RotateApiKey(request, metadata=operator.metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "grace_seconds" in caught.value.details()
        assert stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(secret)).key.active


class TestRevokeApiKey:
    def test_revoking_is_idempotent_and_audited_once(
        self, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str], pool: Pool, clock: ManualClock
    ) -> None:
        secret = make_key(pb.SCOPE_READ)
        first = stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=_key_id(secret)), metadata=operator.metadata).key
        clock.advance(timedelta(hours=1))
        again = stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=_key_id(secret)), metadata=operator.metadata).key
        assert again.revoked_at == first.revoked_at
        assert _audit_actions(pool, _key_id(secret)) == ["api_key.create", "api_key.revoke"]
        code = _code(lambda: stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(secret)))
        assert code == grpc.StatusCode.UNAUTHENTICATED

    def test_the_tenants_last_admin_key_cannot_be_revoked(
        self, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str], pool: Pool
    ) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=operator.principal.key_id), metadata=operator.metadata)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(caught.value) == "LAST_ADMIN_KEY"
        assert stub.WhoAmI(pb.WhoAmIRequest(), metadata=operator.metadata).key.active
        assert _audit_actions(pool, operator.principal.key_id) == ["api_key.create"]

        # With a second admin key the first may go, and the second is then the last.
        second = make_key(pb.SCOPE_ADMIN)
        stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=operator.principal.key_id), metadata=bearer(second))
        assert _code(lambda: stub.WhoAmI(pb.WhoAmIRequest(), metadata=operator.metadata)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        revoke_second = pb.RevokeApiKeyRequest(key_id=_key_id(second))
        assert _code(lambda: stub.RevokeApiKey(revoke_second, metadata=bearer(second))) == (
            grpc.StatusCode.FAILED_PRECONDITION
        )


class TestTenantIsolation:
    @pytest.fixture
    def stranger(self, pool: Pool) -> Caller:
        principal, secret = ensure_operator_key(pool, "another tenant", now=CLOCK_START)
        assert secret is not None
        return Caller(principal, secret)

    def test_another_tenants_keys_are_invisible_and_untouchable(
        self, stub: ControlPlaneStub, operator: Caller, stranger: Caller, make_key: Callable[..., str], pool: Pool
    ) -> None:
        victim = make_key(pb.SCOPE_READ)
        listed = stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=stranger.metadata).keys
        assert [k.key_id for k in listed] == [stranger.principal.key_id]

        for call in (
            lambda: stub.RotateApiKey(pb.RotateApiKeyRequest(key_id=_key_id(victim)), metadata=stranger.metadata),
            lambda: stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=_key_id(victim)), metadata=stranger.metadata),
            # A guessed id answers exactly like a real one of another tenant.
            lambda: stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id="ak_0123456789abcdef"), metadata=stranger.metadata),
        ):
            assert _code(call) == grpc.StatusCode.NOT_FOUND

        assert stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(victim)).key.active
        assert _audit_actions(pool, _key_id(victim)) == ["api_key.create"]
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (3,)
