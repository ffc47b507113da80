"""What was marked into stored items, beside their training eligibility now.

A file is never re-signed when its item later becomes ineligible (removal manifests are the
authority); DSR exports and VerifyProvenance report both: what the file says, and the state now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from control_plane import eligibility
from control_plane.db.pool import Connection
from control_plane.policy import PolicyRegistry


@dataclass(frozen=True)
class ItemProvenance:
    """One stored item's marks and current eligibility."""

    content_id: UUID
    training_use_in_file: str
    """What its signed manifest says ('allowed' / 'notAllowed'); '' for unmarked items (uploads)."""
    watermarked: bool
    watermark_skipped: str
    """Why it carries no watermark ('' when it does, or when it was never marked)."""
    eligible_for_training_now: bool
    training_explanation: str
    """Why not (or "eligible for training use")."""

    def as_json(self) -> dict[str, Any]:
        """The DSR export's form."""
        return {
            "training_use_in_file": self.training_use_in_file or None,
            "watermarked": self.watermarked,
            "watermark_skipped": self.watermark_skipped or None,
            "eligible_for_training_now": self.eligible_for_training_now,
            "training_explanation": self.training_explanation,
        }


def item_provenance(
    conn: Connection,
    policies: PolicyRegistry,
    *,
    now: datetime,
    account_id: UUID | None = None,
    content_ids: Sequence[UUID] | None = None,
) -> dict[UUID, ItemProvenance]:
    """The items of `account_id`, or those of `content_ids`, by content id (eligibility at `now`)."""
    if (account_id is None) == (content_ids is None):
        raise ValueError("pass exactly one of account_id and content_ids")
    where = "c.account_id = %(account_id)s" if account_id is not None else "c.content_id = ANY(%(content_ids)s)"
    rows = conn.execute(
        f"""
        WITH {eligibility.ELIGIBILITY_CTES}
        SELECT c.content_id, {eligibility.INELIGIBILITY_SQL}, coalesce(cp.training_use, ''),
               cp.watermark_payload IS NOT NULL, coalesce(cp.watermark_skipped, '')
        FROM {eligibility.ELIGIBILITY_FROM}
        LEFT JOIN content_provenance cp ON cp.content_id = c.content_id
        WHERE {where}
        """,
        {
            **eligibility.eligibility_params(conn, policies, now),
            "account_id": account_id,
            "content_ids": list(content_ids or []),
        },
    ).fetchall()
    states = {}
    for content_id, reason, use, watermarked, skipped in rows:
        answer = eligibility.EligibilityAnswer(
            eligible=reason is None,
            reason=eligibility.Ineligibility(reason) if reason is not None else None,
            matching_items=1,
            exported=False,
        )
        states[content_id] = ItemProvenance(content_id, use, watermarked, skipped, answer.eligible, answer.explanation)
    return states
