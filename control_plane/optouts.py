"""The opt-out registry: accounts and items whose content leaves every future training export.

An opt-out is recorded with when, where (`source`) and who (the API key); recording the same
one again is a no-op. Items already exported become ineligible at once, and the removal
manifests of those exports list them (`removals.reconcile_removals`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from control_plane import accounts
from control_plane.audit import Actor, record_audit
from control_plane.db.pool import Connection
from control_plane.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_SOURCE_CHARS = 100
_COLUMNS = "optout_id, account_id, content_id, sha256, source, created_at"


@dataclass(frozen=True)
class OptOut:
    """One active entry of the registry."""

    optout_id: int
    account_id: UUID
    content_id: UUID | None
    """None for the whole account (or once the item was purged)."""
    sha256: str | None
    """The item's SHA-256; None for the whole account."""
    source: str
    created_at: datetime


def record_optout(
    conn: Connection,
    *,
    tenant_id: UUID,
    account_id: UUID,
    content_id: UUID | None,
    source: str,
    actor: Actor,
    now: datetime,
) -> tuple[OptOut, bool]:
    """Opts an account's content (all of it, or one item) out of training, with its audit row.

    Returns:
        The active opt-out, and whether this call created it (False: it already existed).

    Raises:
        InvalidArgument: `source` is not 1..100 characters.
        NotFound: No such account in the tenant, or no such live item of the account.
        FailedPrecondition: The account was erased.
    """
    if not 1 <= len(source) <= MAX_SOURCE_CHARS:
        raise InvalidArgument("source", f"must be 1..{MAX_SOURCE_CHARS} characters, e.g. 'web' or 'support'")
    with conn.transaction():
        account = accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
        if account.status is accounts.AccountStatus.ERASED:
            raise FailedPrecondition(f"account {account_id} was erased", reason="ACCOUNT_ERASED")
        sha256: str | None = None
        if content_id is not None:
            row = conn.execute(
                "SELECT sha256 FROM content WHERE content_id = %s AND account_id = %s AND deleted_at IS NULL",
                (content_id, account_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"content {content_id} of account {account_id} not found")
            sha256 = row[0]
        inserted = conn.execute(
            f"""
            INSERT INTO optouts (account_id, content_id, sha256, source, created_at, actor_key_id)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT DO NOTHING
            RETURNING {_COLUMNS}
            """,
            (account_id, content_id, sha256, source, now, actor.key_id),
        ).fetchone()
        if inserted is None:
            existing = conn.execute(
                f"""
                SELECT {_COLUMNS} FROM optouts
                WHERE account_id = %s AND withdrawn_at IS NULL AND sha256 IS NOT DISTINCT FROM %s
                  AND (%s::text IS NOT NULL OR content_id IS NULL)
                ORDER BY optout_id LIMIT 1
                """,
                (account_id, sha256, sha256),
            ).fetchone()
            if existing is None:
                raise RuntimeError("an opt-out conflicted but none is active")
            return _optout(existing), False
        optout = _optout(inserted)
        details: dict[str, Any] = {"account_id": str(account_id), "source": source}
        if content_id is not None:
            details["content_id"] = str(content_id)
        record_audit(conn, actor, now, "training.optout", "optout", optout.optout_id, details)
    return optout, True


def list_optouts(conn: Connection, *, tenant_id: UUID, account_id: UUID) -> list[OptOut]:
    """The account's active opt-outs, oldest first.

    Raises:
        NotFound: No such account in the tenant.
    """
    accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM optouts WHERE account_id = %s AND withdrawn_at IS NULL ORDER BY optout_id",
        (account_id,),
    ).fetchall()
    return [_optout(row) for row in rows]


def _optout(row: tuple[Any, ...]) -> OptOut:
    optout_id, account_id, content_id, sha256, source, created_at = row
    return OptOut(optout_id, account_id, content_id, sha256, source, created_at)
