"""Service API keys: creation, authentication, scopes, and the operator key of the launcher.

A secret reads `atk_<key_id>_<random>`, where key_id is `ak_` and 16 hex digits (public,
the primary key) and random is `secrets.token_urlsafe(32)`. Only the SHA-256 of the whole
secret is stored; authentication looks the key up by id and compares hashes in constant
time. A plain hash (not a slow password hash) is right here: the secret carries 256 random
bits, so there is nothing to brute-force, and every RPC authenticates.

Rotation issues a new key with the old one's name and scopes and sets the old key's
`revoked_at` to the end of a grace period (now, or up to MAX_ROTATION_GRACE later), so
services can roll the new secret out while the old one still works; a key authenticates
while `revoked_at` is unset or still in the future. A key is rotated at most once (its
`replaced_by` names the successor); revoking a key in its grace period ends it at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from control_plane.audit import SYSTEM, Actor, record_audit
from control_plane.db.pool import Connection, Pool, expect_row
from control_plane.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from control_plane.tenants import claim_operator_tenant, ensure_tenant
from control_plane.ttl_cache import TtlCache

_SECRET_FORMAT = re.compile(r"^atk_(ak_[0-9a-f]{16})_[A-Za-z0-9_-]{43}$")
_KEY_ID_FORMAT = re.compile(r"^ak_[0-9a-f]{16}$")
_COLUMNS = "key_id, tenant_id, name, scopes, created_at, revoked_at, replaced_by"

MAX_ROTATION_GRACE = timedelta(days=1)
"""Longest time a rotated key keeps working next to its successor."""

OPERATOR_KEY_NAME = "operator"


class Scope(StrEnum):
    """What a key may do. ADMIN implies every other scope."""

    GENERATE = "generate"
    READ = "read"
    PRIVACY = "privacy"
    ADMIN = "admin"
    ACT_FOR_ANY = "act-for-any"
    """Act for any account of the tenant without naming the acting account (jobs, operators)."""


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
    """When the key stopped (or, in a rotation's grace period, will stop) authenticating."""
    replaced_by: str | None = None
    """The key a rotation issued in its place."""

    def is_active(self, now: datetime) -> bool:
        """Whether the key authenticates at `now`."""
        return self.revoked_at is None or self.revoked_at > now


@dataclass(frozen=True)
class KeyCursor:
    """Position in a tenant's key listing (newest first): the last key of a page."""

    created_at: datetime
    key_id: str


@dataclass(frozen=True)
class ApiKeyPage:
    """One page of a tenant's keys; `next_cursor` is None on the last page."""

    keys: tuple[ApiKey, ...]
    next_cursor: KeyCursor | None


@dataclass(frozen=True)
class Rotation:
    """What a rotation did: the new key and its secret, and the old key with its end."""

    key: ApiKey
    secret: str
    previous: ApiKey


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


@dataclass(frozen=True)
class KeyRecord:
    """What authenticating a secret read from the database: its principal and when it stops."""

    principal: Principal
    revoked_at: datetime | None
    """When the key stopped (or, in a rotation's grace period, will stop) authenticating."""


def authenticate(
    conn: Connection,
    secret: str,
    now: datetime | None = None,
    cache: TtlCache[str, KeyRecord] | None = None,
) -> Principal:
    """Returns who holds `secret`.

    Args:
        conn: Connection.
        secret: The bearer secret.
        now: The time to judge revocation at (a rotated key works until its grace period
            ends); the wall clock when None.
        cache: Keys that authenticated recently, by the SHA-256 of their whole secret (so a
            hit proves the secret). A key revoked elsewhere keeps working here until its
            entry expires; clear the cache after revoking or rotating through this process.
            None reads the database every time.

    Raises:
        Unauthenticated: The secret is malformed, unknown or revoked. The message does not
            say which, so keys cannot be probed.
    """
    match = _SECRET_FORMAT.match(secret)
    if match is None:
        raise Unauthenticated("the API key is malformed: send `authorization: Bearer atk_...`")
    secret_hash = _hash_secret(secret)

    def load() -> KeyRecord:
        row = conn.execute(
            "SELECT tenant_id, secret_sha256, scopes, revoked_at FROM api_keys WHERE key_id = %s",
            (match.group(1),),
        ).fetchone()
        # Compare even for an unknown key id, so timing does not reveal which ids exist.
        matches = hmac.compare_digest(secret_hash, row[1] if row is not None else "0" * 64)
        if row is None or not matches:
            raise _unknown_or_revoked()
        principal = Principal(key_id=match.group(1), tenant_id=row[0], scopes=frozenset(Scope(s) for s in row[2]))
        return KeyRecord(principal, row[3])

    record = load() if cache is None else cache.get_or_load(secret_hash, load)
    instant = now if now is not None else datetime.now(UTC)
    if record.revoked_at is not None and record.revoked_at <= instant:
        raise _unknown_or_revoked()
    return record.principal


def get_api_key(conn: Connection, key_id: str) -> ApiKey:
    """Returns a key by id (revoked or not).

    Raises:
        NotFound: No such key.
    """
    row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,)).fetchone()
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    return _api_key(row)


def list_api_keys(conn: Connection, *, tenant_id: UUID, limit: int, after: KeyCursor | None) -> ApiKeyPage:
    """Lists a tenant's keys, revoked ones included, newest first.

    Args:
        conn: Connection.
        tenant_id: Whose keys.
        limit: Page size, >= 1.
        after: The previous page's `next_cursor`; None for the first page.
    """
    if after is None:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE tenant_id = %s ORDER BY created_at DESC, key_id DESC LIMIT %s",
            (tenant_id, limit + 1),
        ).fetchall()
    else:
        rows = conn.execute(
            f"""
            SELECT {_COLUMNS} FROM api_keys
            WHERE tenant_id = %s AND (created_at, key_id) < (%s, %s)
            ORDER BY created_at DESC, key_id DESC LIMIT %s
            """,
            (tenant_id, after.created_at, after.key_id, limit + 1),
        ).fetchall()
    keys = tuple(_api_key(row) for row in rows[:limit])
    next_cursor = KeyCursor(keys[-1].created_at, keys[-1].key_id) if len(rows) > limit else None
    return ApiKeyPage(keys, next_cursor)


def rotate_api_key(
    conn: Connection, *, tenant_id: UUID, key_id: str, grace: timedelta, actor: Actor, now: datetime
) -> Rotation:
    """Issues a new key with the name and scopes of `key_id`, which stops working after `grace`.

    The old key is locked for the transaction, so two concurrent rotations of one key
    issue one successor and the other caller gets FAILED_PRECONDITION.

    Args:
        conn: Connection outside a transaction.
        tenant_id: The caller's tenant; another tenant's key is NOT_FOUND.
        key_id: The key to replace.
        grace: How long the old key keeps working, 0..MAX_ROTATION_GRACE.
        actor: Who rotates.
        now: When.

    Raises:
        InvalidArgument: Malformed key id or grace out of range.
        NotFound: The tenant has no such key.
        FailedPrecondition: The key is revoked or already rotated.
    """
    _check_key_id(key_id)
    if not timedelta(0) <= grace <= MAX_ROTATION_GRACE:
        raise InvalidArgument(
            "grace_seconds", f"must be 0..{int(MAX_ROTATION_GRACE.total_seconds())} (0 revokes the old key at once)"
        )
    with conn.transaction():
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = %s AND tenant_id = %s FOR UPDATE", (key_id, tenant_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"API key {key_id} not found")
        old = _api_key(row)
        if old.replaced_by is not None:
            raise FailedPrecondition(
                f"API key {key_id} was already rotated to {old.replaced_by}: rotate that key instead",
                reason="API_KEY_ROTATED",
            )
        if old.revoked_at is not None:
            raise FailedPrecondition(f"API key {key_id} is revoked: create a new key instead", reason="API_KEY_REVOKED")
        new, secret = create_api_key(conn, tenant_id=tenant_id, name=old.name, scopes=old.scopes, actor=actor, now=now)
        ends_at = now + grace
        row = conn.execute(
            f"UPDATE api_keys SET revoked_at = %s, replaced_by = %s WHERE key_id = %s RETURNING {_COLUMNS}",
            (ends_at, new.key_id, key_id),
        ).fetchone()
        details = {
            "replaced_by": new.key_id,
            "grace_seconds": int(grace.total_seconds()),
            "revoked_at": ends_at.isoformat(),
        }
        record_audit(conn, actor, now, "api_key.rotate", "api_key", key_id, details)
    return Rotation(key=new, secret=secret, previous=_api_key(expect_row(row)))


def revoke_api_key(conn: Connection, *, tenant_id: UUID, key_id: str, actor: Actor, now: datetime) -> ApiKey:
    """Revokes a key of the tenant; later calls with it are UNAUTHENTICATED. Idempotent.

    A key in a rotation's grace period stops working at once. Revoking a revoked key
    changes nothing and writes no audit row.

    Raises:
        InvalidArgument: Malformed key id.
        NotFound: The tenant has no such key.
        FailedPrecondition: It is the tenant's last admin key without an end date (reason
            LAST_ADMIN_KEY): revoking it would lock the tenant out of its own keys and accounts.
    """
    _check_key_id(key_id)
    with conn.transaction():
        # Serialises revocations of one tenant, so two racing ones cannot each leave the other's key last.
        conn.execute("SELECT 1 FROM tenants WHERE tenant_id = %s FOR UPDATE", (tenant_id,))
        row = conn.execute(
            f"""
            UPDATE api_keys SET revoked_at = %s
            WHERE key_id = %s AND tenant_id = %s AND (revoked_at IS NULL OR revoked_at > %s)
            RETURNING {_COLUMNS}
            """,
            (now, key_id, tenant_id, now),
        ).fetchone()
        if row is not None:
            key = _api_key(row)
            if Scope.ADMIN in key.scopes and not _has_lasting_admin_key(conn, tenant_id):
                raise FailedPrecondition(
                    f"API key {key_id} is the tenant's last admin key: create or rotate another admin key first",
                    reason="LAST_ADMIN_KEY",
                )
            record_audit(conn, actor, now, "api_key.revoke", "api_key", key_id)
            return key
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = %s AND tenant_id = %s", (key_id, tenant_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"API key {key_id} not found")
    return _api_key(row)


def _has_lasting_admin_key(conn: Connection, tenant_id: UUID) -> bool:
    # A key in a rotation's grace period ends on its own, so only keys without an end date count.
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE tenant_id = %s AND revoked_at IS NULL AND 'admin' = ANY (scopes))",
        (tenant_id,),
    ).fetchone()
    return row is not None and bool(row[0])


def ensure_operator_key(
    pool: Pool,
    tenant_name: str,
    *,
    now: datetime | None = None,
    key_name: str = OPERATOR_KEY_NAME,
) -> tuple[Principal, str | None]:
    """Makes sure a tenant exists with an admin key called `key_name`; used by the launcher.

    The first tenant this is called for becomes the deployment's operator tenant
    (`tenants.claim_operator_tenant`): the launcher's, which calls it on an empty database.

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
        claim_operator_tenant(conn, tenant.tenant_id)
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


def _unknown_or_revoked() -> Unauthenticated:
    return Unauthenticated("the API key is unknown or revoked")


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_key_id(key_id: str) -> None:
    if _KEY_ID_FORMAT.match(key_id) is None:
        raise InvalidArgument("key_id", "must look like ak_ and 16 hex digits, as ListApiKeys shows it")


def _api_key(row: tuple[Any, ...]) -> ApiKey:
    key_id, tenant_id, name, scopes, created_at, revoked_at, replaced_by = row
    return ApiKey(key_id, tenant_id, name, tuple(Scope(s) for s in scopes), created_at, revoked_at, replaced_by)
