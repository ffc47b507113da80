"""The audit log: one append-only row per state change, written in that change's transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from control_plane.db.pool import Connection


@dataclass(frozen=True)
class Actor:
    """Who performs a state change, for the audit trail."""

    key_id: str | None
    """API key acting; None for the system itself (sweepers, launcher bootstrap)."""

    tenant_id: UUID | None
    """Tenant the key acts for; None for the system."""

    request_id: str | None = None
    """Request id of the RPC, joining the audit row to the server's logs."""

    acting_account_id: UUID | None = None
    """The end user the key acted for (x-atelier-acting-account or a verified user token)."""


SYSTEM = Actor(key_id=None, tenant_id=None)
"""The actor of changes no API key asked for (expiry sweeps, bootstrap)."""


@dataclass(frozen=True)
class AuditEntry:
    """One audit row to write. `details` must never hold prompts, images or secrets."""

    action: str
    target_type: str
    target_id: str
    details: Mapping[str, Any]


def record_audit(
    conn: Connection,
    actor: Actor,
    now: datetime,
    action: str,
    target_type: str,
    target_id: object,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Writes one audit row; call it inside the transaction of the change it records.

    Args:
        conn: Connection with the change's transaction open.
        actor: Who acted.
        now: When.
        action: Dotted verb, e.g. `credits.reserve`.
        target_type: Kind of thing changed, e.g. `reservation`.
        target_id: Its id (converted with `str`).
        details: JSON-serialisable facts (amounts, states); never personal data.
    """
    record_audits(conn, actor, now, [AuditEntry(action, target_type, str(target_id), details or {})])


_COLUMNS = "at, actor_key_id, tenant_id, request_id, acting_account_id, action, target_type, target_id, details"


def audit_rows_sql(*, action: str, target_type: str, target_id: str, details: str, source: str) -> str:
    """SQL inserting one audit row per row of `source`, for a write done in one statement.

    Meant as a CTE of a data-modifying statement (`audit AS (...)`), so the audit row commits
    with the change or not at all, in the same round trip. The statement's parameters must
    include `now` and those of `actor_parameters`.

    Args:
        action: The action, a constant such as `credits.reserve` (never caller input).
        target_type: Kind of thing changed, a constant.
        target_id: SQL expression over `source` giving the target's id as text.
        details: SQL expression over `source` giving the details as jsonb.
        source: The CTE holding the changed rows.
    """
    return f"""
        INSERT INTO audit_log ({_COLUMNS})
        SELECT %(now)s, %(actor_key_id)s, %(actor_tenant_id)s, %(actor_request_id)s,
               %(acting_account_id)s::uuid, '{action}', '{target_type}', {target_id}, {details}
        FROM {source}
    """


def actor_parameters(actor: Actor) -> dict[str, object]:
    """The query parameters naming `actor` in `audit_rows_sql`."""
    return {
        "actor_key_id": actor.key_id,
        "actor_tenant_id": actor.tenant_id,
        "actor_request_id": actor.request_id,
        "acting_account_id": actor.acting_account_id,
    }


def record_audits(conn: Connection, actor: Actor, now: datetime, entries: Iterable[AuditEntry]) -> None:
    """Writes several audit rows in one round trip (e.g. one per stored item)."""
    rows = [
        (
            now,
            actor.key_id,
            actor.tenant_id,
            actor.request_id,
            actor.acting_account_id,
            e.action,
            e.target_type,
            e.target_id,
            Jsonb(dict(e.details)),
        )
        for e in entries
    ]
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO audit_log ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


@dataclass(frozen=True)
class AuditRecord:
    """One stored audit row."""

    id: int
    at: datetime
    actor_key_id: str | None
    request_id: str | None
    action: str
    target_type: str
    target_id: str
    details: Mapping[str, Any]
    acting_account_id: UUID | None = None


def list_account_audit(
    conn: Connection, account_id: UUID, *, limit: int, before_id: int | None = None
) -> list[AuditRecord]:
    """Audit rows about an account (as target, or naming it in their details), newest first.

    The caller checks the account belongs to its tenant.

    Args:
        limit: Most rows, >= 1.
        before_id: Only rows older than this id (keyset pagination); None for the newest.
    """
    rows = conn.execute(
        """
        SELECT id, at, actor_key_id, request_id, action, target_type, target_id, details, acting_account_id
        FROM audit_log
        WHERE ((target_type = 'account' AND target_id = %(account)s)
               OR (details ? 'account_id' AND details ->> 'account_id' = %(account)s))
          AND (%(before)s::bigint IS NULL OR id < %(before)s)
        ORDER BY id DESC
        LIMIT %(limit)s
        """,
        {"account": str(account_id), "before": before_id, "limit": limit},
    ).fetchall()
    return [AuditRecord(*row) for row in rows]
