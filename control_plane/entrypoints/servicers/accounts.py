"""Accounts and API keys: CreateAccount, GetAccount, and the tenant's keys (create, list, rotate, revoke)."""

from __future__ import annotations

from datetime import timedelta

import grpc
from typing_extensions import override

from control_plane import accounts, api_keys, registration
from control_plane.accounts import AgeEvidence, Tier, Visibility
from control_plane.api_keys import Scope
from control_plane.entrypoints import convert
from control_plane.entrypoints import page_tokens as tokens
from control_plane.entrypoints.servicers._base import ControlPlaneRpcs
from control_plane.errors import InvalidArgument
from protos.atelier.v1 import common_pb2, control_plane_pb2

API_KEY_PAGE_DEFAULT, API_KEY_PAGE_MAX = 100, 500


class AccountRpcs(ControlPlaneRpcs):
    """The accounts and API-key RPCs of control_plane.proto."""

    @override
    def CreateAccount(
        self, request: control_plane_pb2.CreateAccountRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.CreateAccountResponse:
        """Creates an account of the caller's tenant. Scope: admin."""
        with self._call(context, Scope.ADMIN, "CreateAccount") as (conn, caller):
            profile = self._profile(conn, caller)
            tier = convert.parse_enum("tier", request.tier, control_plane_pb2.Tier, convert.TIER_FROM_PB, Tier.FREE)
            visibility = convert.parse_enum(
                "default_visibility",
                request.default_visibility,
                common_pb2.Visibility,
                convert.VISIBILITY_FROM_PB,
                Visibility(profile.default_visibility),
            )
            evidence = AgeEvidence(
                birth_date=convert.parse_birth_date(request.birth_date),
                age_attested=request.age_attested or None,
            )
            account, balance = registration.register_account(
                conn,
                tenant_id=caller.tenant_id,
                evidence=evidence,
                minimum_age=profile.minimum_age,
                guardian_age=profile.guardian_age,
                default_visibility=visibility,
                tier=tier,
                initial_credits=request.initial_credits,
                actor=caller.actor,
                now=caller.now,
            )
        return control_plane_pb2.CreateAccountResponse(
            account=convert.account_pb(account), balance=convert.balance_pb(balance)
        )

    @override
    def GetAccount(
        self, request: control_plane_pb2.GetAccountRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetAccountResponse:
        """Returns an account of the caller's tenant. Scope: read."""
        with self._call(context, Scope.READ, "GetAccount") as (conn, caller):
            account_id = caller.act_on(convert.parse_uuid("account_id", request.account_id))
            account = accounts.get_account(conn, tenant_id=caller.tenant_id, account_id=account_id)
        return control_plane_pb2.GetAccountResponse(account=convert.account_pb(account))

    # --- API keys ---------------------------------------------------------------------------

    @override
    def CreateApiKey(
        self, request: control_plane_pb2.CreateApiKeyRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.CreateApiKeyResponse:
        """Creates a key of the caller's tenant and returns its secret once. Scope: admin."""
        with self._call(context, Scope.ADMIN, "CreateApiKey") as (conn, caller):
            if not request.scopes:
                raise InvalidArgument("scopes", "must name at least one scope")
            scopes = [
                convert.parse_enum(f"scopes[{i}]", number, control_plane_pb2.Scope, convert.SCOPE_FROM_PB)
                for i, number in enumerate(request.scopes)
            ]
            key, secret = api_keys.create_api_key(
                conn,
                tenant_id=caller.tenant_id,
                name=request.name,
                scopes=scopes,
                actor=caller.actor,
                now=caller.now,
            )
        return control_plane_pb2.CreateApiKeyResponse(key=convert.api_key_pb(key, caller.now), secret=secret)

    @override
    def WhoAmI(
        self, request: control_plane_pb2.WhoAmIRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.WhoAmIResponse:
        """Describes the calling key. Any valid key."""
        with self._call(context, None, "WhoAmI") as (conn, caller):
            key = api_keys.get_api_key(conn, caller.principal.key_id)
        return control_plane_pb2.WhoAmIResponse(key=convert.api_key_pb(key, caller.now))

    @override
    def ListApiKeys(
        self, request: control_plane_pb2.ListApiKeysRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListApiKeysResponse:
        """Lists the tenant's keys, revoked ones included, newest first. Scope: admin."""
        with self._call(context, Scope.ADMIN, "ListApiKeys") as (conn, caller):
            limit = convert.parse_page_size(request.page_size, default=API_KEY_PAGE_DEFAULT, maximum=API_KEY_PAGE_MAX)
            after = tokens.decode_api_key_token(request.page_token, caller.tenant_id)
            page = api_keys.list_api_keys(conn, tenant_id=caller.tenant_id, limit=limit, after=after)
        next_token = (
            tokens.encode_api_key_token(caller.tenant_id, page.next_cursor) if page.next_cursor is not None else ""
        )
        return control_plane_pb2.ListApiKeysResponse(
            keys=[convert.api_key_pb(key, caller.now) for key in page.keys], next_page_token=next_token
        )

    @override
    def RotateApiKey(
        self, request: control_plane_pb2.RotateApiKeyRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RotateApiKeyResponse:
        """Replaces a key of the tenant with a new secret; the old one ends after the grace. Scope: admin."""
        with self._call(context, Scope.ADMIN, "RotateApiKey") as (conn, caller):
            rotation = api_keys.rotate_api_key(
                conn,
                tenant_id=caller.tenant_id,
                key_id=request.key_id,
                grace=timedelta(seconds=request.grace_seconds),
                actor=caller.actor,
                now=caller.now,
            )
        # The old key's cached row has no end yet: read it afresh from now on.
        self._caller_facts.clear()
        return control_plane_pb2.RotateApiKeyResponse(
            key=convert.api_key_pb(rotation.key, caller.now),
            secret=rotation.secret,
            previous=convert.api_key_pb(rotation.previous, caller.now),
        )

    @override
    def RevokeApiKey(
        self, request: control_plane_pb2.RevokeApiKeyRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RevokeApiKeyResponse:
        """Revokes a key of the tenant at once; idempotent. Scope: admin."""
        with self._call(context, Scope.ADMIN, "RevokeApiKey") as (conn, caller):
            key = api_keys.revoke_api_key(
                conn,
                tenant_id=caller.tenant_id,
                key_id=request.key_id,
                actor=caller.actor,
                now=caller.now,
            )
        self._caller_facts.clear()
        return control_plane_pb2.RevokeApiKeyResponse(key=convert.api_key_pb(key, caller.now))

    # --- credits ----------------------------------------------------------------------------
