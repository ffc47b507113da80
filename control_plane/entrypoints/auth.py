"""Authentication of an RPC, shared by every servicer: the bearer key, its scope, a connection,
and the `Caller` a domain function is handed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import grpc
import psycopg
from psycopg_pool import PoolTimeout

from control_plane import api_keys
from control_plane.api_keys import Principal, Scope
from control_plane.audit import Actor
from control_plane.db.pool import Connection, Pool, connection_wait_s
from control_plane.entrypoints.bearer import bearer_secret
from control_plane.entrypoints.interceptor import current_request_id, reject_unstorable_text
from control_plane.errors import DatabaseUnavailable, PermissionDenied


@dataclass(frozen=True)
class Caller:
    """Who is calling and when, built once per RPC after authentication."""

    principal: Principal
    """The authenticated key: its id, tenant and scopes."""
    now: datetime
    """The server clock's time when the call was authenticated; every change it makes is stamped with it."""
    request_id: str | None
    """The RPC's request id, joining audit rows to the server's logs."""

    @property
    def tenant_id(self) -> UUID:
        """The tenant the key acts for; every row the call touches belongs to it."""
        return self.principal.tenant_id

    @property
    def actor(self) -> Actor:
        """The audit actor of the changes this call makes."""
        return self.principal.actor(self.request_id)


@contextmanager
def authorized(
    pool: Pool,
    context: grpc.ServicerContext,
    scope: Scope | None,
    method: str,
    *,
    now: datetime,
    database_up: Callable[[], bool] = lambda: True,
) -> Iterator[tuple[Connection, Caller]]:
    """Borrows a connection, authenticates the caller on it and checks `scope`.

    Authentication comes before any field is parsed: an unauthenticated caller learns
    nothing about its request, not even that a field is malformed. `now` (the server's
    clock) decides whether a rotated key's grace period is over, and stamps the call.
    While `database_up()` (the server's `DatabaseProbe`) says the database is down, the call
    fails at once rather than wait for a connection that cannot come.

    Raises:
        Unauthenticated: No bearer key, or an unknown or revoked one.
        PermissionDenied: The key lacks `scope` (and 'admin').
        InvalidArgument: A string of the request holds NUL (U+0000).
        DatabaseUnavailable: The database cannot be reached (in time for the caller's deadline).
    """
    secret = bearer_secret(context.invocation_metadata())
    if not database_up():
        raise DatabaseUnavailable()
    wait_s = connection_wait_s(context.time_remaining(), pool.timeout)
    try:
        with pool.connection(timeout=wait_s) as conn:
            principal = api_keys.authenticate(conn, secret, now)
            if scope is not None and not principal.allows(scope):
                # The message does not name `method`: through the gateway, a Generate's caller
                # would read the name of an internal call (ReserveCredits) it never made.
                raise PermissionDenied(
                    f"this call needs an API key with the {scope.value!r} scope (or 'admin'); "
                    f"this key has {', '.join(sorted(principal.scopes))}"
                )
            reject_unstorable_text()
            yield conn, Caller(principal=principal, now=now, request_id=current_request_id())
    except (PoolTimeout, psycopg.OperationalError) as error:
        raise DatabaseUnavailable() from error
