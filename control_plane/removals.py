"""Removal manifests: exported items that must leave training data, per export, with reason and time.

Design: removals are derived, not announced. `reconcile_removals` compares what each export
held (`export_items`) with `eligibility.INELIGIBILITY_SQL` now, and appends every item that
is no longer eligible to the append-only `export_removals` (once per export and item). It runs
at the end of every sweep pass, after every export, and before every `ListRemovals` read, so a
reader always sees the current state. This way no code path that makes content ineligible
(opt-out, consent withdrawal, deletion, erasure, moderation, retention, a profile change) has
to remember to write a manifest, and the eligibility rule is written once. Two paths record
themselves because the evidence disappears with the row: the sweeper appends `swept` in its
batch transaction, and rows deleted by anything else are `erased` (dated from the erasure's
audit row).

A removal is final: an item that becomes eligible again stays listed (trainers have deleted
it); a later export may include it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from control_plane.db.pool import Connection
from control_plane.eligibility import (
    ELIGIBILITY_CTES,
    ELIGIBILITY_FROM,
    INELIGIBILITY_SQL,
    Ineligibility,
    eligibility_params,
)
from control_plane.errors import NotFound
from control_plane.policy import PolicyRegistry
from control_plane.training_exports import PSEUDONYM_SQL

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('atelier.export_removals'))"
"""Taken by every writer of `export_removals` before it appends, and held to its commit; readers
take it shared. So a removal id is never committed behind one a reader has already passed, and
cursors miss nothing."""


@dataclass(frozen=True)
class Removal:
    """One item of an export to delete from training data."""

    removal_id: int
    """Position in the manifest: the cursor."""
    salted_id: str
    """The item's pseudonymous id in the export."""
    reason: Ineligibility
    removed_at: datetime


@dataclass(frozen=True)
class RemovalPage:
    """A page of an export's removal manifest."""

    removals: list[Removal]
    last_removal_id: int
    """Pass as `after_id` to continue (the same value when the page was empty)."""


def reconcile_removals(
    conn: Connection, registry: PolicyRegistry, *, now: datetime, export_id: UUID | None = None
) -> int:
    """Appends every exported item that is no longer eligible at `now` and not yet listed.

    Idempotent and serialised across processes (transaction-level advisory lock).

    Args:
        export_id: Only this export's items; None for every export.

    Returns:
        How many (export, item) removals were appended.
    """
    params = {**eligibility_params(conn, registry, now), "export_id": export_id}
    with conn.transaction():
        conn.execute(LOCK_SQL)
        # Hash joins over every exported item beat a million index probes; they need the memory.
        conn.execute("SET LOCAL work_mem = '256MB'")
        appended = conn.execute(_RECONCILE_SQL, params).rowcount
    return max(appended, 0)


# One pass over the exported items not yet removed, each joined to its content row (if any) and
# judged: a missing row was erased (dated from the erasure's audit row), a present one gives its
# first failed eligibility check.
_RECONCILE_SQL = f"""
    WITH {ELIGIBILITY_CTES}
    INSERT INTO export_removals (export_id, content_id, reason, removed_at)
    SELECT e.export_id, e.content_id,
           CASE WHEN c.content_id IS NULL THEN 'erased' ELSE {INELIGIBILITY_SQL} END,
           CASE WHEN c.content_id IS NULL THEN least(coalesce(
               (SELECT max(l.at) FROM audit_log l WHERE l.target_type = 'content'
                    AND l.target_id = e.content_id::text AND l.action = 'content.erase'),
               (SELECT max(l.at) FROM audit_log l WHERE l.target_type = 'account'
                    AND l.target_id = e.account_id::text AND l.action = 'account.erase'),
               %(now)s), %(now)s)
           ELSE %(now)s END
    FROM export_items e
    LEFT JOIN ({ELIGIBILITY_FROM}) ON c.content_id = e.content_id
    WHERE (%(export_id)s::uuid IS NULL OR e.export_id = %(export_id)s)
      AND NOT EXISTS (SELECT 1 FROM export_removals r WHERE r.export_id = e.export_id AND r.content_id = e.content_id)
      AND (c.content_id IS NULL OR {INELIGIBILITY_SQL} IS NOT NULL)
    ON CONFLICT (export_id, content_id) DO NOTHING
"""


def list_removals(
    conn: Connection,
    registry: PolicyRegistry,
    *,
    tenant_id: UUID,
    export_id: UUID,
    after_id: int,
    limit: int,
    now: datetime,
) -> RemovalPage:
    """Reconciles, then returns up to `limit` removals of the export after `after_id`, oldest first.

    Only items of the tenant's accounts are listed.

    Raises:
        NotFound: No such export.
    """
    exists = conn.execute("SELECT 1 FROM training_exports WHERE export_id = %s", (export_id,)).fetchone()
    if exists is None:
        raise NotFound(f"training export {export_id} not found")
    reconcile_removals(conn, registry, now=now, export_id=export_id)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock_shared(hashtext('atelier.export_removals'))")
        rows = conn.execute(
            f"""
        SELECT r.removal_id, {PSEUDONYM_SQL.format(salt="t.salt", id="r.content_id")}, r.reason, r.removed_at
        FROM export_removals r
        JOIN training_exports t ON t.export_id = r.export_id
        JOIN export_items e ON e.export_id = r.export_id AND e.content_id = r.content_id
        WHERE r.export_id = %s AND r.removal_id > %s
          AND e.account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %s)
        ORDER BY r.removal_id
        LIMIT %s
        """,
            (export_id, after_id, tenant_id, limit),
        ).fetchall()
    removals = [Removal(rid, salted, Ineligibility(reason), at) for rid, salted, reason, at in rows]
    return RemovalPage(removals, removals[-1].removal_id if removals else after_id)
