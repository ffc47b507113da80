"""Service API keys: creation, authentication, scopes, and the operator key of the launcher.

A secret reads `atk_<key_id>_<random>`, where key_id is `ak_` and 16 hex digits (public,
the primary key) and random is `secrets.token_urlsafe(32)`. Only the SHA-256 of the whole
secret is stored; authentication looks the key up by id and compares hashes in constant
time. A plain hash (not a slow password hash) is right here: the secret carries 256 random
bits, so there is nothing to brute-force, and every RPC authenticates.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from control_plane.audit import SYSTEM, Actor, record_audit
from control_plane.db.pool import Connection, Pool, expect_row
from control_plane.errors import InvalidArgument, NotFound, Unauthenticated
from control_plane.tenants import ensure_tenant

_SECRET_FORMAT = re.compile(r"^atk_(ak_[0-9a-f]{16})_[A-Za-z0-9_-]{43}$")
_COLUMNS = "key_id, tenant_id, name, scopes, created_at, revoked_at"

OPERATOR_KEY_NAME = "operator"


class Scope(StrEnum):
    """What a key may do. ADMIN implies every other scope."""

    GENERATE = "generate"
    READ = "read"
    PRIVACY = "privacy"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a key, its tenant and its scopes."""

    key_id: str
    tenant_id: UUID
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        """Whether the key holds `scope` (directly or through ADMIN)."""
        return Scope.ADMIN in self.scopes or scope in self.scopes

    def actor(self, request_id: str | None = None) -> Actor:
        """The audit actor for changes this principal makes."""
        return Actor(key_id=self.key_id, tenant_id=self.tenant_id, request_id=request_id)


@dataclass(frozen=True)
class ApiKey:
    """An API key row (without its hash)."""

    key_id: str
    tenant_id: UUID
    name: str
    scopes: tuple[Scope, ...]
    created_at: datetime
    revoked_at: datetime | None


def create_api_key(
    conn: Connection,
    *,
    tenant_id: UUID,
    name: str,
    scopes: Iterable[Scope],
    actor: Actor,
    now: datetime,
) -> tuple[ApiKey, str]:
    """Creates a key for a tenant.

    Args:
        conn: Connection outside a transaction (or inside one, as a savepoint).
        tenant_id: Tenant the key acts for.
        name: Label, 1..100 characters.
        scopes: At least one scope; duplicates are ignored.
        actor: Who creates it.
        now: Creation time.

    Returns:
        The key and its secret. The secret is not stored and cannot be shown again.

    Raises:
        InvalidArgument: Bad name or no scopes.
        NotFound: No such tenant.
    """
    if not 1 <= len(name) <= 100:
        raise InvalidArgument("name", "must be 1..100 characters")
    ordered_scopes = tuple(sorted(set(scopes)))
    if not ordered_scopes:
        raise InvalidArgument("scopes", "must name at least one scope")
    key_id = f"ak_{secrets.token_hex(8)}"
    secret = f"atk_{key_id}_{secrets.token_urlsafe(32)}"
    with conn.transaction():
        if conn.execute("SELECT 1 FROM tenants WHERE tenant_id = %s", (tenant_id,)).fetchone() is None:
            raise NotFound(f"tenant {tenant_id} not found")
        row = conn.execute(
            f"""
            INSERT INTO api_keys (key_id, tenant_id, name, secret_sha256, scopes, created_at)
            VALUES (%s, %s, %s, %s, %s, %s)
            RETURNING {_COLUMNS}
            """,
            (key_id, tenant_id, name, _hash_secret(secret), [s.value for s in ordered_scopes], now),
        ).fetchone()
        details = {"tenant_id": str(tenant_id), "scopes": [s.value for s in ordered_scopes]}
        record_audit(conn, actor, now, "api_key.create", "api_key", key_id, details)
    return _api_key(expect_row(row)), secret


def authenticate(conn: Connection, secret: str) -> Principal:
    """Returns who holds `secret`.

    Raises:
        Unauthenticated: The secret is malformed, unknown or revoked. The message does not
            say which, so keys cannot be probed.
    """
    match = _SECRET_FORMAT.match(secret)
    if match is None:
        raise Unauthenticated("the API key is malformed: send `authorization: Bearer atk_...`")
    row = conn.execute(
        "SELECT tenant_id, secret_sha256, scopes, revoked_at FROM api_keys WHERE key_id = %s",
        (match.group(1),),
    ).fetchone()
    # Hash and compare even for an unknown key id, so timing does not reveal which ids exist.
    stored_hash = row[1] if row is not None else "0" * 64
    matches = hmac.compare_digest(_hash_secret(secret), stored_hash)
    if row is None or not matches or row[3] is not None:
        raise Unauthenticated("the API key is unknown or revoked")
    return Principal(key_id=match.group(1), tenant_id=row[0], scopes=frozenset(Scope(s) for s in row[2]))


def get_api_key(conn: Connection, key_id: str) -> ApiKey:
    """Returns a key by id (revoked or not).

    Raises:
        NotFound: No such key.
    """
    row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,)).fetchone()
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    return _api_key(row)


def revoke_api_key(conn: Connection, *, tenant_id: UUID, key_id: str, actor: Actor, now: datetime) -> ApiKey:
    """Revokes a key of the tenant; later calls with it are UNAUTHENTICATED. Idempotent.

    Raises:
        NotFound: The tenant has no such key.
    """
    with conn.transaction():
        row = conn.execute(
            f"""
            UPDATE api_keys SET revoked_at = coalesce(revoked_at, %s)
            WHERE key_id = %s AND tenant_id = %s
            RETURNING {_COLUMNS}
            """,
            (now, key_id, tenant_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"API key {key_id} not found")
        record_audit(conn, actor, now, "api_key.revoke", "api_key", key_id)
    return _api_key(row)


def ensure_operator_key(
    pool: Pool,
    tenant_name: str,
    *,
    now: datetime | None = None,
    key_name: str = OPERATOR_KEY_NAME,
) -> tuple[Principal, str | None]:
    """Makes sure a tenant exists with an admin key called `key_name`; used by the launcher.

    The first call creates the tenant and the key and returns the secret; later calls find
    the live key and return None for the secret (only its hash is stored), so the caller
    must keep the secret from the first call (the launcher writes it to a 0600 file).
    Concurrent callers are serialised on the tenant row, so exactly one key is created.

    Args:
        pool: Database pool.
        tenant_name: Tenant to create or reuse, e.g. "default".
        now: Creation time; the wall clock when None.
        key_name: Name of the admin key.

    Returns:
        The key's principal, and its secret when this call created it (else None).
    """
    instant = now if now is not None else datetime.now(UTC)
    with pool.connection() as conn:
        tenant, _ = ensure_tenant(conn, name=tenant_name, actor=SYSTEM, now=instant)
        with conn.transaction():
            conn.execute("SELECT 1 FROM tenants WHERE tenant_id = %s FOR UPDATE", (tenant.tenant_id,))
            row = conn.execute(
                """
                SELECT key_id FROM api_keys
                WHERE tenant_id = %s AND name = %s AND revoked_at IS NULL AND 'admin' = ANY (scopes)
                ORDER BY created_at LIMIT 1
                """,
                (tenant.tenant_id, key_name),
            ).fetchone()
            if row is not None:
                principal = Principal(key_id=row[0], tenant_id=tenant.tenant_id, scopes=frozenset({Scope.ADMIN}))
                return principal, None
            key, secret = create_api_key(
                conn, tenant_id=tenant.tenant_id, name=key_name, scopes=[Scope.ADMIN], actor=SYSTEM, now=instant
            )
    return Principal(key_id=key.key_id, tenant_id=key.tenant_id, scopes=frozenset(key.scopes)), secret


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _api_key(row: tuple[Any, ...]) -> ApiKey:
    key_id, tenant_id, name, scopes, created_at, revoked_at = row
    return ApiKey(key_id, tenant_id, name, tuple(Scope(s) for s in scopes), created_at, revoked_at)
