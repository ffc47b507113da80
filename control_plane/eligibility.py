"""Training eligibility: the one SQL definition export, lookups, removals and tests share.

An item may be used for training when, in this order of checks:
its account is not erased; it is not deleted; it is not past its retention deadline
(`retention.DEADLINE_SQL`); moderation did not flag it; its owner was not a minor when it was
stored; it is generated (not an upload for editing); neither the account nor the item is in
the opt-out registry; the owner's newest training-consent record is not a withdrawal; under an
`opt_in` profile such a grant exists; and it is public, unless the profile lets private
content be used. `INELIGIBILITY_SQL` names the first check that fails, NULL when none does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from control_plane.accounts import ADULT_AGE
from control_plane.db.pool import Connection
from control_plane.errors import InvalidArgument, NotFound
from control_plane.policy import PolicyRegistry
from control_plane.retention import DEADLINE_SQL, POLICY_CTE, TenantPolicies


class Ineligibility(StrEnum):
    """Why an item may not be used for training (also the reasons of removal manifests)."""

    NOT_FOUND = "not_found"
    ERASED = "erased"
    DELETED = "deleted"
    PAST_RETENTION = "past_retention"
    FLAGGED = "flagged"
    MINOR = "minor"
    UPLOAD = "upload"
    OPTED_OUT = "opted_out"
    CONSENT_WITHDRAWN = "consent_withdrawn"
    NO_CONSENT = "no_consent"
    PRIVATE = "private"
    SWEPT = "swept"


EXPLANATIONS: dict[Ineligibility, str] = {
    Ineligibility.NOT_FOUND: "no content of this tenant has these bytes (never stored, or already purged)",
    Ineligibility.ERASED: "the account was erased",
    Ineligibility.DELETED: "the owner deleted the item",
    Ineligibility.PAST_RETENTION: "the item is past its retention deadline",
    Ineligibility.FLAGGED: "moderation flagged the item",
    Ineligibility.MINOR: f"the owner was under {ADULT_AGE} when it was stored",
    Ineligibility.UPLOAD: "uploads for editing are never used for training",
    Ineligibility.OPTED_OUT: "the account or the item opted out of training use",
    Ineligibility.CONSENT_WITHDRAWN: "the owner withdrew training consent",
    Ineligibility.NO_CONSENT: "the profile needs an explicit training consent and the owner gave none",
    Ineligibility.PRIVATE: "the item is private and the profile keeps private content out of training",
    Ineligibility.SWEPT: "the retention sweeper deleted the item",
}

ELIGIBILITY_CTES = f"""
{POLICY_CTE},
training_consent (account_id, granted) AS (
    SELECT DISTINCT ON (account_id) account_id, granted FROM consents WHERE purpose = 'training'
    ORDER BY account_id, recorded_at DESC, consent_id DESC
)
"""
"""`WITH`-clause bodies `ELIGIBILITY_FROM` needs; parameters from `eligibility_params`."""

ELIGIBILITY_FROM = """
content c
JOIN accounts a ON a.account_id = c.account_id
JOIN policy p ON p.tenant_id = a.tenant_id
LEFT JOIN training_consent tc ON tc.account_id = c.account_id
"""
"""The relations `INELIGIBILITY_SQL` reads: item `c`, owner `a`, owner's policy `p`, consent `tc`."""

# IN (subquery) rather than EXISTS: PostgreSQL hashes the opt-out set once per statement
# instead of probing it per row, which is what keeps a million-row export fast.
INELIGIBILITY_SQL = f"""
(CASE
    WHEN a.status = 'erased' THEN 'erased'
    WHEN c.deleted_at IS NOT NULL THEN 'deleted'
    WHEN {DEADLINE_SQL} <= %(now)s THEN 'past_retention'
    WHEN c.flagged THEN 'flagged'
    WHEN c.created_by_minor THEN 'minor'
    WHEN c.kind <> 'generated' THEN 'upload'
    WHEN c.account_id IN (SELECT account_id FROM optouts
                          WHERE withdrawn_at IS NULL AND content_id IS NULL AND sha256 IS NULL)
      OR c.content_id IN (SELECT content_id FROM optouts WHERE withdrawn_at IS NULL AND content_id IS NOT NULL)
      OR (c.account_id, c.sha256) IN (SELECT account_id, sha256 FROM optouts
                                      WHERE withdrawn_at IS NULL AND sha256 IS NOT NULL)
      THEN 'opted_out'
    WHEN tc.granted IS FALSE THEN 'consent_withdrawn'
    WHEN tc.granted IS NULL AND NOT p.training_opt_out THEN 'no_consent'
    WHEN c.visibility <> 'public' AND NOT p.private_in_training THEN 'private'
END)
"""
"""The first failed check's `Ineligibility` value, NULL when the item is eligible at `%(now)s`."""


def eligibility_params(conn: Connection, registry: PolicyRegistry, now: datetime) -> dict[str, Any]:
    """Query parameters of `ELIGIBILITY_CTES` and `INELIGIBILITY_SQL` at `now`."""
    return {**TenantPolicies.load(conn, registry).params(), "now": now}


@dataclass(frozen=True)
class EligibilityAnswer:
    """CheckTrainingEligibility's answer."""

    eligible: bool
    reason: Ineligibility | None
    """None when eligible."""
    matching_items: int
    exported: bool

    @property
    def explanation(self) -> str:
        """One line for people."""
        return "eligible for training use" if self.reason is None else EXPLANATIONS[self.reason]


def check_training_eligibility(
    conn: Connection, registry: PolicyRegistry, *, tenant_id: UUID, sha256: str, now: datetime
) -> EligibilityAnswer:
    """Whether content of the tenant with these bytes may be used for training at `now`.

    Eligible only when at least one item matches and every matching item is eligible (the
    bytes cannot tell a trainer which of several owners' items it holds). An opt-out of an
    item that was since purged still answers OPTED_OUT.

    Raises:
        InvalidArgument: `sha256` is not 64 hex digits.
    """
    digest = sha256.strip().lower()
    if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        raise InvalidArgument("sha256", "must be the SHA-256 of the image bytes as 64 hex digits")
    params = {**eligibility_params(conn, registry, now), "sha256": digest, "tenant_id": tenant_id}
    rows = conn.execute(
        f"""
        WITH {ELIGIBILITY_CTES}
        SELECT {INELIGIBILITY_SQL} FROM {ELIGIBILITY_FROM}
        WHERE c.sha256 = %(sha256)s AND a.tenant_id = %(tenant_id)s
        """,
        params,
    ).fetchall()
    row = conn.execute(
        """
        SELECT EXISTS (SELECT 1 FROM export_items e JOIN content c USING (content_id)
                       JOIN accounts a ON a.account_id = c.account_id
                       WHERE c.sha256 = %(sha256)s AND a.tenant_id = %(tenant_id)s),
               EXISTS (SELECT 1 FROM optouts o JOIN accounts a USING (account_id)
                       WHERE o.sha256 = %(sha256)s AND o.withdrawn_at IS NULL AND a.tenant_id = %(tenant_id)s)
        """,
        params,
    ).fetchone()
    exported, opted_out = (bool(row[0]), bool(row[1])) if row is not None else (False, False)
    reasons = [Ineligibility(r[0]) for r in rows if r[0] is not None]
    if not rows:
        reason: Ineligibility | None = Ineligibility.OPTED_OUT if opted_out else Ineligibility.NOT_FOUND
    else:
        reason = reasons[0] if reasons else None
    return EligibilityAnswer(eligible=reason is None, reason=reason, matching_items=len(rows), exported=exported)


def eligible_content_ids(conn: Connection, registry: PolicyRegistry, *, now: datetime) -> set[UUID]:
    """Every eligible item's id at `now` (for tests and audits; exports stream instead)."""
    rows = conn.execute(
        f"WITH {ELIGIBILITY_CTES} SELECT c.content_id FROM {ELIGIBILITY_FROM} WHERE {INELIGIBILITY_SQL} IS NULL",
        eligibility_params(conn, registry, now),
    ).fetchall()
    return {row[0] for row in rows}


def new_item_ineligibility(
    conn: Connection,
    registry: PolicyRegistry,
    *,
    account_id: UUID,
    kind: str,
    visibility: str,
    flagged: bool,
    minor: bool,
    now: datetime,
) -> Ineligibility | None:
    """Why an item about to be stored would not be eligible for training at `now`; None if it would.

    Judged by the one definition (`INELIGIBILITY_SQL`) on the row as it will be inserted, so a
    file's signed training assertion and the exports agree at the moment the item is made.
    """
    # A `content` CTE holding the would-be row shadows the table in ELIGIBILITY_FROM.
    row = conn.execute(
        f"""
        WITH {ELIGIBILITY_CTES},
        content (content_id, account_id, kind, visibility, flagged, created_by_minor, sha256,
                 created_at, expires_at, deleted_at, purge_after) AS (
            VALUES (NULL::uuid, %(account_id)s::uuid, %(kind)s::text, %(visibility)s::text, %(flagged)s::boolean,
                    %(minor)s::boolean, NULL::text, %(now)s::timestamptz, NULL::timestamptz, NULL::timestamptz,
                    NULL::timestamptz)
        )
        SELECT {INELIGIBILITY_SQL} FROM {ELIGIBILITY_FROM}
        """,
        {
            **eligibility_params(conn, registry, now),
            "account_id": account_id,
            "kind": kind,
            "visibility": visibility,
            "flagged": flagged,
            "minor": minor,
        },
    ).fetchone()
    if row is None:
        raise NotFound(f"account {account_id} not found")
    return Ineligibility(row[0]) if row[0] is not None else None
