"""Authentication of an RPC, shared by every servicer: the bearer key, its scope, the end user
it acts for, a connection, and the `Caller` a domain function is handed.

The acting-account model (DESIGN.md §9): a service key acts for its tenant. A call made on
behalf of an end user names that user's account in `x-atelier-acting-account` metadata, and
where the tenant's identity provider requires it, proves it with an OIDC ID token in
`x-atelier-user-token` (`user_tokens`). Such a call may only touch that account's content:
another account's ids answer NOT_FOUND, as another tenant's do. A key without the
`act-for-any` scope must name an acting account on account-scoped calls (PERMISSION_DENIED
otherwise); jobs and operators (admin keys) may omit it. Audit rows record the acting account
next to the key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import grpc
import psycopg
from psycopg_pool import PoolTimeout

from control_plane import api_keys, tenants
from control_plane.api_keys import Principal, Scope
from control_plane.audit import Actor
from control_plane.caller_facts import CallerFacts
from control_plane.clock import Clock
from control_plane.db.pool import Connection, Pool, connection_wait_s
from control_plane.entrypoints.bearer import bearer_secret
from control_plane.entrypoints.interceptor import current_request_id, reject_unstorable_text
from control_plane.errors import DatabaseUnavailable, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from control_plane.user_tokens import UserTokenVerifier
from transport.call_metadata import ACTING_ACCOUNT, USER_TOKEN, first_value


@dataclass(frozen=True)
class Caller:
    """Who is calling and when, built once per RPC after authentication."""

    principal: Principal
    """The authenticated key: its id, tenant and scopes."""
    now: datetime
    """The server clock's time when the call was authenticated; every change it makes is stamped with it."""
    request_id: str | None
    """The RPC's request id, joining audit rows to the server's logs."""
    acting_account_id: UUID | None = None
    """The end user the call acts for; None when the key acts for its tenant as a whole."""

    @property
    def tenant_id(self) -> UUID:
        """The tenant the key acts for; every row the call touches belongs to it."""
        return self.principal.tenant_id

    @property
    def actor(self) -> Actor:
        """The audit actor of the changes this call makes (the key, and the end user it acts for)."""
        return Actor(
            key_id=self.principal.key_id,
            tenant_id=self.principal.tenant_id,
            request_id=self.request_id,
            acting_account_id=self.acting_account_id,
        )

    def require_acting_or_any(self) -> UUID | None:
        """The acting account, which only a key with `act-for-any` may leave unnamed.

        Call it on every account-scoped RPC before touching anything; pass its answer down as
        the owner the call is limited to.

        Raises:
            PermissionDenied: No acting account named and the key lacks `act-for-any`.
        """
        if self.acting_account_id is None and not self.principal.allows(Scope.ACT_FOR_ANY):
            raise PermissionDenied(
                f"name the end user's account in {ACTING_ACCOUNT!r} metadata; only keys with the "
                "'act-for-any' scope (or 'admin') may act for any account of the tenant"
            )
        return self.acting_account_id

    def own_account(self, requested: UUID | None) -> UUID | None:
        """The account a call that may name none is limited to: the acting account, else `requested`.

        For reads that serve other accounts' public items to a viewer (GetContent, ListContent)
        and for filters (ListDsrRequests), and for owner checks of items named by id.

        Raises:
            PermissionDenied: No acting account named and the key lacks `act-for-any`.
            NotFound: `requested` names another account than the acting one.
        """
        acting = self.require_acting_or_any()
        if acting is None:
            return requested
        if requested is not None and requested != acting:
            raise NotFound(f"account {requested} not found")
        return acting

    def act_on(self, account_id: UUID) -> UUID:
        """`account_id`, once the call may act on it: see `require_acting_or_any`.

        Raises:
            PermissionDenied: No acting account named and the key lacks `act-for-any`.
            NotFound: The call acts for another account (worded as for an unknown one).
        """
        self.own_account(account_id)
        return account_id


@contextmanager
def authorized(
    pool: Pool,
    context: grpc.ServicerContext,
    scope: Scope | None,
    method: str,
    *,
    now: datetime,
    user_tokens: UserTokenVerifier,
    database_up: Callable[[], bool] = lambda: True,
    facts: CallerFacts | None = None,
) -> Iterator[tuple[Connection, Caller]]:
    """Borrows a connection, authenticates the caller on it, checks `scope` and reads the acting account.

    Authentication comes before any field is parsed: an unauthenticated caller learns
    nothing about its request, not even that a field is malformed. `now` (the server's
    clock) decides whether a rotated key's grace period is over, and stamps the call.
    While `database_up()` (the server's `DatabaseProbe`) says the database is down, the call
    fails at once rather than wait for a connection that cannot come. With `facts`, the key
    and the tenant's identity provider come from its caches when read recently (see
    `caller_facts` for how stale they may be); the connection is borrowed all the same.

    Raises:
        Unauthenticated: No bearer key, or an unknown or revoked one; an invalid user token,
            or none where the tenant requires one with an acting account.
        PermissionDenied: The key lacks `scope` (and 'admin'); or the acting account and
            the user token's account differ.
        InvalidArgument: A string of the request holds NUL (U+0000); the acting account is
            not an account id; a user token is sent to a tenant without an identity provider.
        DatabaseUnavailable: The database cannot be reached (in time for the caller's deadline).
    """
    metadata = context.invocation_metadata()
    secret = bearer_secret(metadata)
    if not database_up():
        raise DatabaseUnavailable()
    wait_s = connection_wait_s(context.time_remaining(), pool.timeout)
    try:
        with pool.connection(timeout=wait_s) as conn:
            principal = api_keys.authenticate(conn, secret, now, facts.keys if facts is not None else None)
            if scope is not None and not principal.allows(scope):
                # The message does not name `method`: through the gateway, a Generate's caller
                # would read the name of an internal call (ReserveCredits) it never made.
                raise PermissionDenied(
                    f"this call needs an API key with the {scope.value!r} scope (or 'admin'); "
                    f"this key has {', '.join(sorted(principal.scopes))}"
                )
            acting = _acting_account(conn, principal, metadata, user_tokens, now, facts)
            reject_unstorable_text()
            yield conn, Caller(principal=principal, now=now, request_id=current_request_id(), acting_account_id=acting)
    except (PoolTimeout, psycopg.OperationalError) as error:
        raise DatabaseUnavailable() from error


@dataclass(frozen=True)
class Authenticator:
    """Authenticates a servicer's RPCs: `authorized` at the server clock's time, with the
    deployment's user-token verifier and database probe."""

    pool: Pool
    clock: Clock
    user_tokens: UserTokenVerifier
    database_up: Callable[[], bool]
    facts: CallerFacts | None = None

    @contextmanager
    def call(
        self, context: grpc.ServicerContext, scope: Scope | None, method: str
    ) -> Iterator[tuple[Connection, Caller]]:
        """See `authorized`."""
        with authorized(
            self.pool,
            context,
            scope,
            method,
            now=self.clock.now(),
            user_tokens=self.user_tokens,
            database_up=self.database_up,
            facts=self.facts,
        ) as (conn, caller):
            yield conn, caller


def _acting_account(
    conn: Connection,
    principal: Principal,
    metadata: Sequence[Any] | None,
    user_tokens: UserTokenVerifier,
    now: datetime,
    facts: CallerFacts | None,
) -> UUID | None:
    """The account the call acts for, from the metadata and (if sent or required) the user token."""
    named = first_value(metadata, ACTING_ACCOUNT)
    token = first_value(metadata, USER_TOKEN)
    if not named and not token:
        return None
    provider = (
        tenants.identity_provider(conn, principal.tenant_id)
        if facts is None
        else facts.identity_providers.get_or_load(
            principal.tenant_id, lambda: tenants.identity_provider(conn, principal.tenant_id)
        )
    )
    if token:
        if provider is None:
            raise InvalidArgument(USER_TOKEN, "this tenant has no identity provider configured; send no user token")
        proven = user_tokens.verify(token, provider, now)
        if named and named != proven:
            raise PermissionDenied(f"{ACTING_ACCOUNT!r} names another account than the user token proves")
        named = proven
    elif provider is not None and provider.required:
        raise Unauthenticated(f"this tenant requires an ID token of the end user in {USER_TOKEN!r} metadata")
    try:
        return UUID(named)
    except ValueError:
        raise InvalidArgument(ACTING_ACCOUNT, f"must be an account id (a UUID), got {named[:40]!r}") from None
