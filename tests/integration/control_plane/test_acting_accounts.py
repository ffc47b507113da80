"""Calls on behalf of an end user: the acting account, the `act-for-any` scope, OIDC user tokens.

A service key acts for its tenant; a call naming an acting account (`x-atelier-acting-account`,
or proven by an ID token of the tenant's identity provider) may only touch that account's
content, and keys without `act-for-any` must name one (DESIGN.md §9).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from atelier.cli import main
from control_plane import tenants
from control_plane.audit import SYSTEM
from control_plane.db.pool import Pool
from control_plane.user_tokens import IdentityProvider
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._privacy import generate, new_item
from tests.integration.control_plane._support import CLOCK_START, Caller, bearer
from transport.call_metadata import ACTING_ACCOUNT, USER_TOKEN

PUBLIC, PRIVATE = common_pb2.VISIBILITY_PUBLIC, common_pb2.VISIBILITY_PRIVATE
ISSUER, AUDIENCE = "https://id.example.test", "atelier-web"


def _acting(secret: str, account_id: str) -> tuple[tuple[str, str], ...]:
    return (*bearer(secret), (ACTING_ACCOUNT, account_id))


def _audit_rows(pool: Pool) -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM audit_log").fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def user_key(make_key: Callable[..., str]) -> str:
    """A web app's key: it reads and changes privacy settings for its signed-in users only."""
    return make_key(pb.SCOPE_READ, pb.SCOPE_PRIVACY, pb.SCOPE_GENERATE, name="web app")


class TestActingAccount:
    def test_another_accounts_image_answers_not_found_and_stays_unchanged(  # type: ignore[no-untyped-def]
        self, pool, stub: ControlPlaneStub, operator: Caller, make_account, user_key: str
    ) -> None:
        owner, other = make_account(credits=5), make_account(credits=5)
        [image] = generate(stub, operator, owner, new_item(1)).contents
        before = _audit_rows(pool)

        for call in (
            lambda: stub.SetVisibility(
                pb.SetVisibilityRequest(content_id=image.content_id, visibility=PUBLIC),
                metadata=_acting(user_key, other),
            ),
            lambda: stub.GetContent(
                pb.GetContentRequest(content_id=image.content_id, include_data=True), metadata=_acting(user_key, other)
            ),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
            assert f"content {image.content_id} not found" in (caught.value.details() or "")

        stored = stub.GetContent(pb.GetContentRequest(content_id=image.content_id), metadata=_acting(user_key, owner))
        assert stored.content.visibility == PRIVATE
        assert _audit_rows(pool) == before

    def test_a_key_without_act_for_any_must_name_the_acting_account(  # type: ignore[no-untyped-def]
        self, stub: ControlPlaneStub, operator: Caller, make_account, user_key: str
    ) -> None:
        account = make_account(credits=5)
        request = pb.SetVisibilityRequest(account_id=account, visibility=PUBLIC, apply_to_default=True)
        with pytest.raises(grpc.RpcError) as caught:
            stub.SetVisibility(request, metadata=bearer(user_key))
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "x-atelier-acting-account" in (caught.value.details() or "")
        account_now = stub.GetAccount(pb.GetAccountRequest(account_id=account), metadata=operator.metadata).account
        assert account_now.default_visibility == PRIVATE

        stub.SetVisibility(request, metadata=_acting(user_key, account))
        entries = stub.ListAuditEntries(
            pb.ListAuditEntriesRequest(account_id=account), metadata=operator.metadata
        ).entries
        [change] = [e for e in entries if e.action == "content.visibility_all"]
        key_id = stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(user_key)).key.key_id
        assert (change.acting_account_id, change.actor_key_id) == (account, key_id)

    def test_act_for_any_keys_and_admin_keys_may_omit_it(  # type: ignore[no-untyped-def]
        self, stub: ControlPlaneStub, operator: Caller, make_account, make_key
    ) -> None:
        account = make_account(credits=5)
        job = make_key(pb.SCOPE_PRIVACY, pb.SCOPE_ACT_FOR_ANY, name="export job")
        for secret in (job, operator.secret):
            stub.RecordConsent(
                pb.RecordConsentRequest(
                    account_id=account,
                    purpose=pb.CONSENT_PURPOSE_TRAINING,
                    granted=True,
                    method=pb.CONSENT_METHOD_SETTINGS,
                    source="job",
                ),
                metadata=bearer(secret),
            )
        history = stub.ListConsentHistory(pb.ListConsentHistoryRequest(account_id=account), metadata=bearer(job))
        assert len(history.records) == 2

    def test_the_acting_account_sees_its_own_items_and_others_public_ones_without_prompt(  # type: ignore[no-untyped-def]
        self, stub: ControlPlaneStub, operator: Caller, make_account, user_key: str
    ) -> None:
        owner, viewer = make_account(credits=5), make_account(credits=5)
        [public] = generate(stub, operator, owner, new_item(2, visibility=PUBLIC)).contents
        seen = stub.GetContent(pb.GetContentRequest(content_id=public.content_id), metadata=_acting(user_key, viewer))
        assert seen.content.content_id == public.content_id and seen.content.prompt == ""
        own = stub.GetContent(pb.GetContentRequest(content_id=public.content_id), metadata=_acting(user_key, owner))
        assert own.content.prompt == "a lighthouse at dusk #2"
        for call in (
            lambda: stub.GetBalance(pb.GetBalanceRequest(account_id=owner), metadata=_acting(user_key, viewer)),
            lambda: stub.RequestErasure(pb.RequestErasureRequest(account_id=owner), metadata=_acting(user_key, viewer)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    def test_a_malformed_acting_account_is_an_invalid_argument_naming_the_metadata(  # type: ignore[no-untyped-def]
        self, stub: ControlPlaneStub, make_account, user_key: str
    ) -> None:
        account = make_account()
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=_acting(user_key, "me"))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert ACTING_ACCOUNT in (caught.value.details() or "")


class _Provider:
    """A tiny OIDC identity provider: one RSA key, publishing its key set, issuing ID tokens."""

    def __init__(self, kid: str = "key-1") -> None:
        self.kid = kid
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        self.jwks = json.dumps({"keys": [{**public, "kid": kid, "use": "sig", "alg": "RS256"}]})

    def token(self, subject: str, **claims: Any) -> str:
        now = int(CLOCK_START.timestamp())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 600, **claims}
        return jwt.encode(body, self.private_key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture(scope="module")
def provider() -> _Provider:
    return _Provider()


def _configure(pool: Pool, operator: Caller, provider: _Provider, *, jwks: str | None = None) -> None:
    with pool.connection() as conn:
        tenants.set_identity_provider(
            conn,
            tenant_id=operator.principal.tenant_id,
            provider=IdentityProvider(ISSUER, AUDIENCE, jwks or provider.jwks, required=True),
            actor=SYSTEM,
            now=CLOCK_START,
        )


class TestUserTokens:
    def test_a_valid_token_proves_the_acting_account(  # type: ignore[no-untyped-def]
        self, pool, stub: ControlPlaneStub, operator: Caller, make_account, user_key: str, provider: _Provider
    ) -> None:
        account = make_account(credits=5)
        _configure(pool, operator, provider)
        token = provider.token(account)
        balance = stub.GetBalance(
            pb.GetBalanceRequest(account_id=account), metadata=(*bearer(user_key), (USER_TOKEN, token))
        ).balance
        assert balance.available == 5
        both = (*_acting(user_key, account), (USER_TOKEN, token))
        assert stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=both).balance.available == 5

    def test_the_key_set_can_be_a_local_file_url(  # type: ignore[no-untyped-def]
        self,
        pool,
        stub: ControlPlaneStub,
        operator: Caller,
        make_account,
        user_key: str,
        provider: _Provider,
        tmp_path: Path,
    ) -> None:
        account = make_account(credits=3)
        jwks_file = tmp_path / "jwks.json"
        jwks_file.write_text(provider.jwks)
        _configure(pool, operator, provider, jwks=jwks_file.as_uri())
        metadata = (*bearer(user_key), (USER_TOKEN, provider.token(account)))
        assert stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=metadata).balance.available == 3

    @pytest.mark.parametrize(
        ("make_token", "code"),
        [
            (lambda p, a: "", grpc.StatusCode.UNAUTHENTICATED),  # required, none sent
            (lambda p, a: p.token(a, exp=int(CLOCK_START.timestamp()) - 120), grpc.StatusCode.UNAUTHENTICATED),
            (lambda p, a: p.token(a, aud="another-app"), grpc.StatusCode.UNAUTHENTICATED),
            (lambda p, a: p.token(a, iss="https://evil.example"), grpc.StatusCode.UNAUTHENTICATED),
            (lambda p, a: _Provider(p.kid).token(a), grpc.StatusCode.UNAUTHENTICATED),  # another key, same kid
            (lambda p, a: p.token("123e4567-e89b-12d3-a456-426614174000"), grpc.StatusCode.PERMISSION_DENIED),
        ],
        ids=["missing", "expired", "other audience", "other issuer", "forged signature", "other subject"],
    )
    def test_a_bad_or_missing_token_is_refused_and_changes_nothing(  # type: ignore[no-untyped-def]
        self,
        pool,
        stub: ControlPlaneStub,
        operator: Caller,
        make_account,
        user_key: str,
        provider: _Provider,
        make_token: Callable[[_Provider, str], str],
        code: grpc.StatusCode,
    ) -> None:
        account = make_account(credits=5)
        _configure(pool, operator, provider)
        token = make_token(provider, account)
        metadata = (*_acting(user_key, account), *(((USER_TOKEN, token),) if token else ()))
        before = _audit_rows(pool)
        with pytest.raises(grpc.RpcError) as caught:
            stub.SetVisibility(
                pb.SetVisibilityRequest(account_id=account, visibility=PUBLIC, apply_to_default=True),
                metadata=metadata,
            )
        assert caught.value.code() is code
        assert _audit_rows(pool) == before

    def test_a_token_sent_to_a_tenant_without_a_provider_is_refused(  # type: ignore[no-untyped-def]
        self, stub: ControlPlaneStub, make_account, user_key: str, provider: _Provider
    ) -> None:
        account = make_account()
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetBalance(
                pb.GetBalanceRequest(account_id=account),
                metadata=(*bearer(user_key), (USER_TOKEN, provider.token(account))),
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_tokens_expire_by_the_server_clock(  # type: ignore[no-untyped-def]
    pool, clock, stub: ControlPlaneStub, operator: Caller, make_account, user_key: str, provider: _Provider
) -> None:
    account = make_account()
    _configure(pool, operator, provider)
    metadata = (*bearer(user_key), (USER_TOKEN, provider.token(account)))
    stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=metadata)
    clock.advance(timedelta(minutes=12))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=metadata)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED and "expired" in (caught.value.details() or "")


def test_the_operator_configures_and_removes_the_provider_with_the_cli(  # type: ignore[no-untyped-def]
    cli_env: Path,
    capsys: pytest.CaptureFixture[str],
    stub: ControlPlaneStub,
    make_account,
    user_key: str,
    provider: _Provider,
) -> None:
    account = make_account()
    jwks_file = cli_env / "jwks.json"
    jwks_file.write_text(provider.jwks)
    command = ["tenant", "identity-provider", "--issuer", ISSUER, "--audience", AUDIENCE]
    assert main([*command, "--jwks", str(jwks_file), "--require", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["required"] is True
    assert main(["tenant", "identity-provider", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "account_claim": "sub",
        "required": True,
    }

    request = pb.GetBalanceRequest(account_id=account)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetBalance(request, metadata=_acting(user_key, account))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    stub.GetBalance(request, metadata=(*bearer(user_key), (USER_TOKEN, provider.token(account))))

    assert main(["tenant", "identity-provider", "--off"]) == 0
    stub.GetBalance(request, metadata=_acting(user_key, account))
    assert main([*command, "--jwks", str(cli_env / "missing.json")]) == 1
    assert "--jwks" in capsys.readouterr().err


class TestIdentityProviderRpcs:
    """SetIdentityProvider / GetIdentityProvider: admin scope, the caller's own tenant, audited."""

    def test_an_admin_sets_reads_and_removes_its_tenants_provider_with_audit_rows(  # type: ignore[no-untyped-def]
        self, pool, stub: ControlPlaneStub, operator: Caller, provider: _Provider
    ) -> None:
        wanted = pb.IdentityProvider(issuer=ISSUER, audience=AUDIENCE, jwks=provider.jwks, require_user_token=True)
        before = _audit_rows(pool)
        set_answer = stub.SetIdentityProvider(
            pb.SetIdentityProviderRequest(provider=wanted), metadata=operator.metadata
        )
        assert set_answer.provider.account_claim == "sub" and set_answer.provider.require_user_token
        found = stub.GetIdentityProvider(pb.GetIdentityProviderRequest(), metadata=operator.metadata)
        assert (found.provider.issuer, found.provider.audience) == (ISSUER, AUDIENCE)
        assert found.provider.jwks == provider.jwks

        removed = stub.SetIdentityProvider(pb.SetIdentityProviderRequest(), metadata=operator.metadata)
        assert not removed.HasField("provider")
        assert not stub.GetIdentityProvider(pb.GetIdentityProviderRequest(), metadata=operator.metadata).HasField(
            "provider"
        )
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT actor_key_id, details->>'issuer' FROM audit_log WHERE action = 'tenant.identity_provider' "
                "ORDER BY id"
            ).fetchall()
        assert [issuer for _, issuer in rows] == [ISSUER, None]
        assert {key_id for key_id, _ in rows} == {operator.principal.key_id}
        assert _audit_rows(pool) == before + 2

    def test_a_key_without_admin_scope_is_refused_and_changes_nothing(  # type: ignore[no-untyped-def]
        self, pool, stub: ControlPlaneStub, operator: Caller, user_key: str, provider: _Provider
    ) -> None:
        stub.SetIdentityProvider(pb.SetIdentityProviderRequest(), metadata=operator.metadata)
        before = _audit_rows(pool)
        wanted = pb.IdentityProvider(issuer=ISSUER, audience=AUDIENCE, jwks=provider.jwks)
        for call in (
            lambda: stub.SetIdentityProvider(pb.SetIdentityProviderRequest(provider=wanted), metadata=bearer(user_key)),
            lambda: stub.GetIdentityProvider(pb.GetIdentityProviderRequest(), metadata=bearer(user_key)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert not stub.GetIdentityProvider(pb.GetIdentityProviderRequest(), metadata=operator.metadata).HasField(
            "provider"
        )
        assert _audit_rows(pool) == before

    @pytest.mark.parametrize(
        ("fields", "named"),
        [
            ({"issuer": "", "audience": AUDIENCE, "jwks": "{}"}, "provider.issuer"),
            ({"issuer": ISSUER, "audience": "a" * 501, "jwks": "{}"}, "provider.audience"),
            ({"issuer": ISSUER, "audience": AUDIENCE, "jwks": "not a key set"}, "provider.jwks"),
        ],
        ids=["no issuer", "long audience", "bad key set"],
    )
    def test_a_malformed_provider_is_invalid_argument_naming_the_field(  # type: ignore[no-untyped-def]
        self, stub: ControlPlaneStub, operator: Caller, fields: dict[str, str], named: str
    ) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            malformed = pb.IdentityProvider(**fields)  # type: ignore[arg-type]
            stub.SetIdentityProvider(pb.SetIdentityProviderRequest(provider=malformed), metadata=operator.metadata)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith(named)

    def test_another_tenants_admin_sets_only_its_own_and_may_not_name_a_local_file(  # type: ignore[no-untyped-def]
        self, pool, stub: ControlPlaneStub, operator: Caller, provider: _Provider, tmp_path: Path
    ) -> None:
        from control_plane.api_keys import ensure_operator_key

        _, secret = ensure_operator_key(pool, "identity provider tenant")
        assert secret is not None
        stranger = bearer(secret)
        stub.SetIdentityProvider(pb.SetIdentityProviderRequest(), metadata=operator.metadata)
        jwks_file = tmp_path / "jwks.json"
        jwks_file.write_text(provider.jwks)
        with pytest.raises(grpc.RpcError) as caught:
            stub.SetIdentityProvider(
                pb.SetIdentityProviderRequest(
                    provider=pb.IdentityProvider(issuer=ISSUER, audience=AUDIENCE, jwks=jwks_file.as_uri())
                ),
                metadata=stranger,
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        own = pb.IdentityProvider(issuer=ISSUER, audience="x", jwks=provider.jwks)
        stub.SetIdentityProvider(pb.SetIdentityProviderRequest(provider=own), metadata=stranger)
        assert stub.GetIdentityProvider(pb.GetIdentityProviderRequest(), metadata=stranger).provider.audience == "x"
        assert not stub.GetIdentityProvider(pb.GetIdentityProviderRequest(), metadata=operator.metadata).HasField(
            "provider"
        )
