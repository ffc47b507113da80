"""The gRPC servicer of `atelier.v1.ControlPlane`: authenticate, parse, call the domain, reply.

Domain errors propagate to `ControlPlaneInterceptor`, which maps them to status codes; this
module never sets a status itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import grpc
import psycopg
from psycopg_pool import PoolTimeout
from typing_extensions import override

from control_plane import _convert as convert
from control_plane import _page_tokens as tokens
from control_plane import accounts, api_keys, content, credits
from control_plane._interceptor import current_request_id
from control_plane.accounts import AgeEvidence, Tier, Visibility
from control_plane.api_keys import Principal, Scope
from control_plane.blobstore import BlobStore
from control_plane.clock import Clock
from control_plane.config import ControlPlaneConfig
from control_plane.db.pool import Connection, Pool
from control_plane.errors import InvalidArgument, PermissionDenied, Unauthenticated, Unavailable
from protos.atelier.v1 import common_pb2, control_plane_pb2, control_plane_pb2_grpc

LEDGER_PAGE_DEFAULT, LEDGER_PAGE_MAX = 50, 500
CONTENT_PAGE_DEFAULT, CONTENT_PAGE_MAX = 20, 100


class ControlPlaneServicer(control_plane_pb2_grpc.ControlPlaneServicer):
    """Implements every RPC of control_plane.proto on the domain modules."""

    def __init__(self, *, config: ControlPlaneConfig, pool: Pool, blobs: BlobStore, clock: Clock) -> None:
        """Serves with these dependencies; nothing is opened here."""
        self._config = config
        self._pool = pool
        self._blobs = blobs
        self._clock = clock

    # --- accounts ---------------------------------------------------------------------------

    @override
    def CreateAccount(
        self, request: control_plane_pb2.CreateAccountRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.CreateAccountResponse:
        """Creates an account of the caller's tenant. Scope: admin."""
        with self._authorized(context, Scope.ADMIN, "CreateAccount") as (conn, principal):
            tier = convert.parse_enum("tier", request.tier, control_plane_pb2.Tier, convert.TIER_FROM_PB, Tier.FREE)
            visibility = convert.parse_enum(
                "default_visibility",
                request.default_visibility,
                common_pb2.Visibility,
                convert.VISIBILITY_FROM_PB,
                Visibility(self._config.default_visibility),
            )
            evidence = AgeEvidence(
                birth_date=convert.parse_birth_date(request.birth_date),
                age_attested=request.age_attested or None,
            )
            account, balance = accounts.create_account(
                conn,
                tenant_id=principal.tenant_id,
                evidence=evidence,
                minimum_age=self._config.minimum_age,
                default_visibility=visibility,
                tier=tier,
                initial_credits=request.initial_credits,
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.CreateAccountResponse(
            account=convert.account_pb(account), balance=convert.balance_pb(balance)
        )

    @override
    def GetAccount(
        self, request: control_plane_pb2.GetAccountRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetAccountResponse:
        """Returns an account of the caller's tenant. Scope: read."""
        with self._authorized(context, Scope.READ, "GetAccount") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            account = accounts.get_account(conn, tenant_id=principal.tenant_id, account_id=account_id)
        return control_plane_pb2.GetAccountResponse(account=convert.account_pb(account))

    # --- API keys ---------------------------------------------------------------------------

    @override
    def CreateApiKey(
        self, request: control_plane_pb2.CreateApiKeyRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.CreateApiKeyResponse:
        """Creates a key of the caller's tenant and returns its secret once. Scope: admin."""
        with self._authorized(context, Scope.ADMIN, "CreateApiKey") as (conn, principal):
            if not request.scopes:
                raise InvalidArgument("scopes", "must name at least one scope")
            scopes = [
                convert.parse_enum(f"scopes[{i}]", number, control_plane_pb2.Scope, convert.SCOPE_FROM_PB)
                for i, number in enumerate(request.scopes)
            ]
            key, secret = api_keys.create_api_key(
                conn,
                tenant_id=principal.tenant_id,
                name=request.name,
                scopes=scopes,
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.CreateApiKeyResponse(key=convert.api_key_pb(key), secret=secret)

    @override
    def WhoAmI(
        self, request: control_plane_pb2.WhoAmIRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.WhoAmIResponse:
        """Describes the calling key. Any valid key."""
        with self._authorized(context, None, "WhoAmI") as (conn, principal):
            key = api_keys.get_api_key(conn, principal.key_id)
        return control_plane_pb2.WhoAmIResponse(key=convert.api_key_pb(key))

    # --- credits ----------------------------------------------------------------------------

    @override
    def GrantCredits(
        self, request: control_plane_pb2.GrantCreditsRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GrantCreditsResponse:
        """Adds credits to an account. Scope: admin."""
        with self._authorized(context, Scope.ADMIN, "GrantCredits") as (conn, principal):
            balance = credits.grant_credits(
                conn,
                tenant_id=principal.tenant_id,
                account_id=convert.parse_uuid("account_id", request.account_id),
                amount=request.amount,
                reason=request.reason,
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.GrantCreditsResponse(balance=convert.balance_pb(balance))

    @override
    def GetBalance(
        self, request: control_plane_pb2.GetBalanceRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetBalanceResponse:
        """Returns an account's balance. Scope: read."""
        with self._authorized(context, Scope.READ, "GetBalance") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            balance = credits.get_balance(conn, tenant_id=principal.tenant_id, account_id=account_id)
        return control_plane_pb2.GetBalanceResponse(balance=convert.balance_pb(balance))

    @override
    def ListLedger(
        self, request: control_plane_pb2.ListLedgerRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListLedgerResponse:
        """Lists an account's ledger, newest first. Scope: read."""
        with self._authorized(context, Scope.READ, "ListLedger") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            page = credits.list_ledger(
                conn,
                tenant_id=principal.tenant_id,
                account_id=account_id,
                limit=convert.parse_page_size(request.page_size, default=LEDGER_PAGE_DEFAULT, maximum=LEDGER_PAGE_MAX),
                before_entry_id=tokens.decode_ledger_token(request.page_token, account_id),
            )
        next_token = (
            tokens.encode_ledger_token(account_id, page.next_before_entry_id)
            if page.next_before_entry_id is not None
            else ""
        )
        return control_plane_pb2.ListLedgerResponse(
            entries=[convert.ledger_entry_pb(entry) for entry in page.entries], next_page_token=next_token
        )

    @override
    def ReserveCredits(
        self, request: control_plane_pb2.ReserveCreditsRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ReserveCreditsResponse:
        """Holds credits for a generation. Scope: generate."""
        with self._authorized(context, Scope.GENERATE, "ReserveCredits") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            reservation, balance = credits.reserve_credits(
                conn,
                tenant_id=principal.tenant_id,
                account_id=account_id,
                amount=request.amount,
                ttl=self._reservation_ttl(request.ttl_seconds),
                purpose=request.purpose,
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.ReserveCreditsResponse(
            reservation=convert.reservation_pb(reservation), balance=convert.balance_pb(balance)
        )

    @override
    def CommitReservation(
        self, request: control_plane_pb2.CommitReservationRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.CommitReservationResponse:
        """Charges a held reservation. Scope: generate."""
        with self._authorized(context, Scope.GENERATE, "CommitReservation") as (conn, principal):
            reservation, balance = credits.commit_reservation(
                conn,
                tenant_id=principal.tenant_id,
                reservation_id=convert.parse_uuid("reservation_id", request.reservation_id),
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.CommitReservationResponse(
            reservation=convert.reservation_pb(reservation), balance=convert.balance_pb(balance)
        )

    @override
    def ReleaseReservation(
        self, request: control_plane_pb2.ReleaseReservationRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ReleaseReservationResponse:
        """Returns a held reservation's credits. Scope: generate."""
        with self._authorized(context, Scope.GENERATE, "ReleaseReservation") as (conn, principal):
            reservation, balance = credits.release_reservation(
                conn,
                tenant_id=principal.tenant_id,
                reservation_id=convert.parse_uuid("reservation_id", request.reservation_id),
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.ReleaseReservationResponse(
            reservation=convert.reservation_pb(reservation), balance=convert.balance_pb(balance)
        )

    # --- content ----------------------------------------------------------------------------

    @override
    def StoreContent(
        self, request: control_plane_pb2.StoreContentRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.StoreContentResponse:
        """Stores 1..16 items together, optionally committing their reservation. Scope: generate."""
        with self._authorized(context, Scope.GENERATE, "StoreContent") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            reservation_id = convert.parse_optional_uuid("commit_reservation_id", request.commit_reservation_id)
            result = content.store_content(
                conn,
                self._blobs,
                tenant_id=principal.tenant_id,
                account_id=account_id,
                items=_new_content(request.items),
                commit_reservation_id=reservation_id,
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.StoreContentResponse(
            contents=[convert.content_pb(item) for item in result.contents],
            reservation=convert.reservation_pb(result.reservation) if result.reservation else None,
            balance=convert.balance_pb(result.balance),
        )

    @override
    def GetContent(
        self, request: control_plane_pb2.GetContentRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetContentResponse:
        """Returns an item's metadata, and its bytes when asked. Scope: read."""
        with self._authorized(context, Scope.READ, "GetContent") as (conn, principal):
            item, data = content.get_content(
                conn,
                self._blobs,
                tenant_id=principal.tenant_id,
                content_id=convert.parse_uuid("content_id", request.content_id),
                include_data=request.include_data,
            )
        return control_plane_pb2.GetContentResponse(content=convert.content_pb(item), data=data or b"")

    @override
    def ListContent(
        self, request: control_plane_pb2.ListContentRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListContentResponse:
        """Lists an account's content, newest first. Scope: read."""
        with self._authorized(context, Scope.READ, "ListContent") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            page = content.list_content(
                conn,
                tenant_id=principal.tenant_id,
                account_id=account_id,
                limit=convert.parse_page_size(
                    request.page_size, default=CONTENT_PAGE_DEFAULT, maximum=CONTENT_PAGE_MAX
                ),
                after=tokens.decode_content_token(request.page_token, account_id),
            )
        next_token = tokens.encode_content_token(account_id, page.next_cursor) if page.next_cursor else ""
        return control_plane_pb2.ListContentResponse(
            contents=[convert.content_pb(item) for item in page.items], next_page_token=next_token
        )

    # --- helpers ----------------------------------------------------------------------------

    @contextmanager
    def _authorized(
        self, context: grpc.ServicerContext, scope: Scope | None, method: str
    ) -> Iterator[tuple[Connection, Principal]]:
        """Borrows a connection, authenticates the caller on it and checks `scope`.

        Authentication comes before any field is parsed: an unauthenticated caller learns
        nothing about its request, not even that a field is malformed.
        """
        secret = _bearer_secret(context.invocation_metadata())
        try:
            with self._pool.connection() as conn:
                principal = api_keys.authenticate(conn, secret)
                if scope is not None and not principal.allows(scope):
                    raise PermissionDenied(
                        f"{method} needs an API key with the {scope.value!r} scope (or 'admin'); "
                        f"this key has {', '.join(sorted(principal.scopes))}"
                    )
                yield conn, principal
        except (PoolTimeout, psycopg.OperationalError) as error:
            raise Unavailable("the database is unavailable right now; retry shortly") from error

    def _reservation_ttl(self, ttl_seconds: int) -> timedelta:
        if ttl_seconds == 0:
            return timedelta(seconds=self._config.reservation_ttl_s)
        if ttl_seconds > self._config.max_reservation_ttl_s:
            raise InvalidArgument(
                "ttl_seconds",
                f"must be 0..{self._config.max_reservation_ttl_s} (0 means {self._config.reservation_ttl_s})",
            )
        return timedelta(seconds=ttl_seconds)


def _bearer_secret(metadata: Sequence[Any] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, secret = str(value).partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
            break
    raise Unauthenticated("send the API key as metadata `authorization: Bearer <secret>`")


def _new_content(items: Sequence[control_plane_pb2.NewContent]) -> list[content.NewContent]:
    return [
        content.NewContent(
            kind=convert.parse_enum(
                f"items[{i}].kind", item.kind, control_plane_pb2.ContentKind, convert.CONTENT_KIND_FROM_PB
            ),
            media_type=item.media_type,
            data=item.data,
            prompt=item.prompt,
            parameters=convert.parameters_to_dict(item.parameters),
            visibility=(
                convert.parse_enum(
                    f"items[{i}].visibility", item.visibility, common_pb2.Visibility, convert.VISIBILITY_FROM_PB
                )
                if item.visibility
                else None
            ),
        )
        for i, item in enumerate(items)
    ]
