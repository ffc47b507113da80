"""Moderation: a pluggable checker of prompts and outputs, and the log of what it flagged.

`ModerationChecker` is the port; `PolicyModerationChecker` (category -> regex rules from the
policy profile) is the default adapter, and a classifier service can replace it behind the
same interface. A blocked prompt reserves nothing and leaves a `moderation_flags` row (its
category, rule, time and account, the prompt's SHA-256, and the prompt itself only when the
policy keeps it); a flagged output is stored private and can never be made public. Generated
images are also judged by the replica's image classifier (see `output_scan`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import NoReturn, Protocol
from uuid import UUID

from control_plane.audit import Actor, record_audit
from control_plane.db.pool import Connection, expect_row
from control_plane.errors import FailedPrecondition, InvalidArgument
from control_plane.policy import ModerationPolicy

MAX_PROMPT_CHARS = 2000


class Stage(StrEnum):
    """What is checked: the prompt before generation, or an item being stored."""

    PROMPT = "prompt"
    OUTPUT = "output"


@dataclass(frozen=True)
class Verdict:
    """Why a checker objects."""

    category: str
    rule: str
    policy: str = "regex"
    """What judged: ``regex`` (the profile's rules) or ``classifier:<name>`` (the replica's image classifier)."""
    score: float | None = None
    """A classifier's score, in [0, 1]; None for a rule."""


class ModerationChecker(Protocol):
    """Checks a prompt, or an output (its bytes and the prompt it came from)."""

    def check(self, stage: Stage, text: str, data: bytes | None = None) -> Verdict | None:
        """Returns a verdict when the input breaks the policy, else None."""
        ...


CheckerFactory = Callable[[ModerationPolicy], ModerationChecker]
"""Builds the checker of a profile's moderation policy."""


class PolicyModerationChecker:
    """The default checker: the first regex of the policy that matches the text decides."""

    def __init__(self, policy: ModerationPolicy) -> None:
        """Checks against `policy`'s rules."""
        self._policy = policy

    def check(self, stage: Stage, text: str, data: bytes | None = None) -> Verdict | None:
        """See `ModerationChecker.check`. Outputs are judged by their prompt (images are opaque
        to regexes); with `check_outputs` off they always pass."""
        if stage is Stage.OUTPUT and not self._policy.check_outputs:
            return None
        for rule in self._policy.rules:
            if rule.pattern.search(text):
                return Verdict(rule.category, rule.name)
        return None


class PromptBlocked(FailedPrecondition):
    """The prompt breaks the moderation policy; nothing was reserved or charged."""

    reason = "PROMPT_BLOCKED"

    def __init__(self, category: str) -> None:
        super().__init__(
            f"the prompt was blocked by the content policy (category {category}); nothing was charged: "
            "change the prompt",
            metadata={"category": category},
        )


def check_prompt(checker: ModerationChecker, prompt: str) -> Verdict | None:
    """The checker's verdict on a prompt before credits are reserved for it (None: it passes).

    Touches no database: a prompt that passes costs no round trip.

    Raises:
        InvalidArgument: The prompt is over 2000 characters (field `prompt`).
    """
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidArgument("prompt", f"must be at most {MAX_PROMPT_CHARS} characters")
    if not prompt:
        return None
    return checker.check(Stage.PROMPT, prompt)


def block_prompt(
    conn: Connection,
    policy: ModerationPolicy,
    verdict: Verdict,
    *,
    account_id: UUID,
    prompt: str,
    actor: Actor,
    now: datetime,
) -> NoReturn:
    """Refuses a prompt `check_prompt` objected to: its flag row and audit row are committed,
    then PromptBlocked is raised.

    Raises:
        PromptBlocked: Always.
    """
    with conn.transaction():
        record_flag(
            conn,
            policy,
            verdict,
            stage=Stage.PROMPT,
            account_id=account_id,
            content_id=None,
            prompt=prompt,
            action="blocked",
            actor=actor,
            now=now,
        )
    raise PromptBlocked(verdict.category)


def record_flag(
    conn: Connection,
    policy: ModerationPolicy,
    verdict: Verdict,
    *,
    stage: Stage,
    account_id: UUID,
    content_id: UUID | None,
    prompt: str,
    action: str,
    actor: Actor,
    now: datetime,
) -> int:
    """Writes a flag row and its audit row inside the caller's transaction; returns the flag id."""
    row = conn.execute(
        """
        INSERT INTO moderation_flags (account_id, content_id, stage, category, action, policy, rule,
                                      prompt_sha256, prompt_text, created_at, score)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        RETURNING flag_id
        """,
        (
            account_id,
            content_id,
            stage.value,
            verdict.category,
            action,
            verdict.policy,
            verdict.rule,
            hashlib.sha256(prompt.encode()).hexdigest() if prompt else None,
            prompt if policy.keep_prompt else None,
            now,
            verdict.score,
        ),
    ).fetchone()
    flag_id = int(expect_row(row)[0])
    details = {
        "account_id": str(account_id),
        "stage": stage.value,
        "category": verdict.category,
        "rule": verdict.rule,
        "action": action,
        **({"policy": verdict.policy, "score": round(verdict.score, 4)} if verdict.score is not None else {}),
        **({"content_id": str(content_id)} if content_id else {}),
    }
    record_audit(conn, actor, now, f"moderation.{action}", "moderation_flag", flag_id, details)
    return flag_id
