"""Generated images judged by the replica's image classifier: validating the verdicts a store carries and
acting on them as the tenant's policy profile says.

The replica sends a verdict (category, score, threshold, classifier) with every generated image; this
module decides. An image scoring at or above its threshold is, per `ModerationPolicy.output_classifier_action`:

- ``block``: the whole store is withheld. Its moderation flags (no content id: nothing is stored) and the
  release of the reservation commit in one transaction, then `OutputBlocked` (FAILED_PRECONDITION,
  reason OUTPUT_BLOCKED) answers; nothing is charged.
- ``flag_private``: the item is stored private and flagged (never public, never exported for training), with
  a flag row in the store's transaction.

Flags record the category, score, threshold and classifier, never the image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from control_plane import credits, moderation
from control_plane.audit import Actor
from control_plane.db.pool import Connection
from control_plane.errors import FailedPrecondition, InvalidArgument
from control_plane.policy import OUTPUT_BLOCK, ModerationPolicy

_CATEGORY = re.compile(r"^[a-z0-9_-]{1,100}$")
_MAX_CLASSIFIER_CHARS = 100


@dataclass(frozen=True)
class ClassifierVerdict:
    """The image classifier's verdict on one generated image."""

    category: str
    """The classifier's category nearest to (or furthest over) its threshold, e.g. ``concept_3``."""
    score: float
    """How strongly the image matches `category`, in [0, 1]."""
    threshold: float
    """The score at and above which `category` counts as present, in [0, 1]."""
    classifier: str
    """Which classifier judged it."""

    @property
    def above_threshold(self) -> bool:
        """Whether the image counts as showing `category` (a threshold of 0 flags every image)."""
        return self.score >= self.threshold

    def as_flag(self) -> moderation.Verdict:
        """The moderation flag this verdict leaves (its rule names the threshold; its policy the classifier)."""
        return moderation.Verdict(
            self.category,
            f"score >= threshold {self.threshold:.4f}",
            policy=f"classifier:{self.classifier}",
            score=self.score,
        )


class OutputBlocked(FailedPrecondition):
    """The classifier judged a generated image above its threshold and the policy withholds such images."""

    reason = "OUTPUT_BLOCKED"

    def __init__(self, category: str) -> None:
        super().__init__(
            f"the generated image was withheld by the content policy (category {category}); nothing was stored "
            "or charged: change the prompt or the seed",
            metadata={"category": category},
        )


def validate_verdict(where: str, verdict: ClassifierVerdict | None, *, generated: bool) -> None:
    """Checks one item's verdict (`where` names the item, e.g. ``items[0]``).

    Raises:
        InvalidArgument: A verdict on an upload; a category not of 1..100 of a-z, 0-9, '_', '-'; a score or
            threshold outside [0, 1]; a classifier name not of 1..100 characters.
    """
    if verdict is None:
        return
    if not generated:
        raise InvalidArgument(f"{where}.output_verdict", "applies only to generated images, not uploads")
    if not _CATEGORY.match(verdict.category):
        raise InvalidArgument(f"{where}.output_verdict.category", "must be 1..100 of a-z, 0-9, '_' and '-'")
    for name in ("score", "threshold"):
        value = getattr(verdict, name)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise InvalidArgument(f"{where}.output_verdict.{name}", f"must lie within [0, 1], got {value}")
    if not 1 <= len(verdict.classifier) <= _MAX_CLASSIFIER_CHARS:
        raise InvalidArgument(
            f"{where}.output_classifier", f"must be 1..{_MAX_CLASSIFIER_CHARS} characters with an output_verdict"
        )


def flags(verdict: ClassifierVerdict | None) -> bool:
    """Whether a stored (not withheld) item with this verdict is flagged: private, never exported."""
    return verdict is not None and verdict.above_threshold


def record_flags(
    conn: Connection,
    policy: ModerationPolicy,
    stored: Sequence[tuple[UUID, str, ClassifierVerdict | None]],
    *,
    account_id: UUID,
    actor: Actor,
    now: datetime,
) -> None:
    """Writes a flag (and its audit row) for each stored item above its threshold, inside the store's
    transaction. `stored` holds each item's content id, prompt and verdict."""
    for content_id, prompt, verdict in stored:
        if verdict is not None and flags(verdict):
            _record_flag(conn, policy, verdict, account_id, content_id, prompt, "flagged", actor, now)


def withhold_if_blocked(
    conn: Connection,
    policy: ModerationPolicy,
    verdicts: Sequence[ClassifierVerdict | None],
    *,
    tenant_id: UUID,
    account_id: UUID,
    prompt: str,
    reservation_id: UUID | None,
    actor: Actor,
    now: datetime,
) -> None:
    """Withholds a store under a ``block`` policy when any verdict is above its threshold.

    Call it before anything of the store is written. The flags (one per image above its threshold) and
    the release of `reservation_id` commit together, then `OutputBlocked` is raised.

    Raises:
        OutputBlocked: The policy blocks and an image is above its threshold.
        NotFound, FailedPrecondition: The reservation is unknown or already settled (nothing is flagged).
    """
    above = [verdict for verdict in verdicts if verdict is not None and verdict.above_threshold]
    if not above or policy.output_classifier_action != OUTPUT_BLOCK:
        return
    with conn.transaction():
        for verdict in above:
            _record_flag(conn, policy, verdict, account_id, None, prompt, "blocked", actor, now)
        if reservation_id is not None:
            credits.release_reservation(
                conn, tenant_id=tenant_id, reservation_id=reservation_id, account_id=account_id, actor=actor, now=now
            )
    raise OutputBlocked(above[0].category)


def _record_flag(
    conn: Connection,
    policy: ModerationPolicy,
    verdict: ClassifierVerdict,
    account_id: UUID,
    content_id: UUID | None,
    prompt: str,
    action: str,
    actor: Actor,
    now: datetime,
) -> None:
    moderation.record_flag(
        conn,
        policy,
        verdict.as_flag(),
        stage=moderation.Stage.OUTPUT,
        account_id=account_id,
        content_id=content_id,
        prompt=prompt,
        action=action,
        actor=actor,
        now=now,
    )
