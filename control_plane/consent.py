"""Consent: append-only records per purpose, the current state, and the guardian gate.

A record says what was granted or withdrawn, when, how (settings toggle, API, guardian)
and where, under which policy version. The current state of a purpose is its newest
record; without one, the profile's default applies (training follows the profile's consent
mode; analytics and marketing are off; processing is on unless a guardian must consent).

An account under the profile's guardian age cannot generate or store anything until its
newest `processing` record is a grant made by a guardian (DESIGN.md §9).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from control_plane import accounts
from control_plane.audit import Actor, record_audit
from control_plane.db.pool import Connection, expect_row
from control_plane.errors import FailedPrecondition, InvalidArgument
from control_plane.policy import PolicyProfile, TrainingConsentMode

MAX_SOURCE_CHARS = 100
MAX_POLICY_VERSION_CHARS = 50
_COLUMNS = "consent_id, account_id, purpose, granted, method, source, policy_version, recorded_at, actor_key_id"

# True when the account (column `account_column`) may generate and store: it needs no
# guardian, or its newest `processing` record is a guardian's grant. Used inside the
# reservation's conditional UPDATE, so the check costs no extra round trip.
PROCESSING_ALLOWED_SQL = """
    NOT EXISTS (
        SELECT 1 FROM account_personal p
        WHERE p.account_id = {account_column} AND p.guardian_required
          AND NOT coalesce((
              SELECT c.granted AND c.method = 'guardian' FROM consents c
              WHERE c.account_id = {account_column} AND c.purpose = 'processing'
              ORDER BY c.recorded_at DESC, c.consent_id DESC LIMIT 1
          ), false)
    )
"""


class Purpose(StrEnum):
    """What a consent is for."""

    TRAINING = "training"
    ANALYTICS = "analytics"
    MARKETING = "marketing"
    PROCESSING = "processing"


class Method(StrEnum):
    """How a consent was collected."""

    SETTINGS = "settings"
    API = "api"
    GUARDIAN = "guardian"


@dataclass(frozen=True)
class ConsentRecord:
    """One append-only consent row."""

    consent_id: int
    account_id: UUID
    purpose: Purpose
    granted: bool
    method: Method
    source: str
    policy_version: str
    recorded_at: datetime
    actor_key_id: str | None


@dataclass(frozen=True)
class ConsentState:
    """The current state of one purpose."""

    purpose: Purpose
    granted: bool
    explicit: bool
    """False when no record exists and the profile's default applies."""
    recorded_at: datetime | None


@dataclass(frozen=True)
class ConsentOverview:
    """Every purpose's state, and whether the account may generate now."""

    states: list[ConsentState]
    training_consent_mode: TrainingConsentMode
    guardian_consent_required: bool
    may_process: bool


class GuardianConsentRequired(FailedPrecondition):
    """The account is under the guardian age and no guardian has consented."""

    reason = "GUARDIAN_CONSENT_REQUIRED"

    def __init__(self, account_id: UUID) -> None:
        super().__init__(
            f"account {account_id} is under the guardian age: record a guardian's consent "
            "(purpose processing, method guardian) before it can generate or store content"
        )


def record_consent(
    conn: Connection,
    *,
    tenant_id: UUID,
    account_id: UUID,
    purpose: Purpose,
    granted: bool,
    method: Method,
    source: str,
    policy_version: str,
    actor: Actor,
    now: datetime,
) -> ConsentRecord:
    """Appends a grant (`granted`) or withdrawal, with its audit row, in one transaction.

    Args:
        source: Where it was collected, 1..100 characters.
        policy_version: Policy text version the user saw, 1..50 characters.

    Raises:
        InvalidArgument: Source or policy version out of range.
        NotFound: No such account in the tenant.
        FailedPrecondition: The account was erased.
    """
    if not 1 <= len(source) <= MAX_SOURCE_CHARS:
        raise InvalidArgument("source", f"must be 1..{MAX_SOURCE_CHARS} characters, e.g. 'web'")
    if not 1 <= len(policy_version) <= MAX_POLICY_VERSION_CHARS:
        raise InvalidArgument("policy_version", f"must be 0..{MAX_POLICY_VERSION_CHARS} characters")
    with conn.transaction():
        account = accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
        if account.status is accounts.AccountStatus.ERASED:
            raise FailedPrecondition(f"account {account_id} was erased", reason="ACCOUNT_ERASED")
        row = conn.execute(
            f"""
            INSERT INTO consents (account_id, purpose, granted, method, source, policy_version, actor_key_id,
                                  recorded_at, details)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
            RETURNING {_COLUMNS}
            """,
            (account_id, purpose.value, granted, method.value, source, policy_version, actor.key_id, now, Jsonb({})),
        ).fetchone()
        record = _record(expect_row(row))
        details = {"account_id": str(account_id), "purpose": purpose.value, "granted": granted, "method": method.value}
        record_audit(conn, actor, now, "consent.record", "consent", record.consent_id, details)
    return record


def consent_history(
    conn: Connection, *, tenant_id: UUID, account_id: UUID, purpose: Purpose | None = None
) -> list[ConsentRecord]:
    """Every record of the account (of one purpose when given), oldest first.

    Raises:
        NotFound: No such account in the tenant.
    """
    accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
    rows = conn.execute(
        f"""
        SELECT {_COLUMNS} FROM consents
        WHERE account_id = %s AND (%s::text IS NULL OR purpose = %s)
        ORDER BY recorded_at, consent_id
        """,
        (account_id, purpose.value if purpose else None, purpose.value if purpose else None),
    ).fetchall()
    return [_record(row) for row in rows]


def current_consents(conn: Connection, *, tenant_id: UUID, account_id: UUID, profile: PolicyProfile) -> ConsentOverview:
    """The current state of every purpose under `profile`.

    Raises:
        NotFound: No such account in the tenant.
    """
    history = consent_history(conn, tenant_id=tenant_id, account_id=account_id)
    newest: dict[Purpose, ConsentRecord] = {record.purpose: record for record in history}
    guardian_required = guardian_consent_required(conn, account_id)
    states = []
    for purpose in Purpose:
        record = newest.get(purpose)
        if record is not None:
            states.append(ConsentState(purpose, record.granted, True, record.recorded_at))
        else:
            states.append(ConsentState(purpose, _default_granted(purpose, profile, guardian_required), False, None))
    processing = newest.get(Purpose.PROCESSING)
    may_process = not guardian_required or (
        processing is not None and processing.granted and processing.method is Method.GUARDIAN
    )
    return ConsentOverview(states, profile.training_consent_mode, guardian_required, may_process)


def guardian_consent_required(conn: Connection, account_id: UUID) -> bool:
    """Whether the account was created under its profile's guardian age."""
    row = conn.execute("SELECT guardian_required FROM account_personal WHERE account_id = %s", (account_id,)).fetchone()
    return bool(row[0]) if row is not None else False


def require_may_process(conn: Connection, account_id: UUID) -> None:
    """Raises GuardianConsentRequired unless the account may generate and store content."""
    row = conn.execute(
        f"SELECT {PROCESSING_ALLOWED_SQL.format(account_column='%(account_id)s')}", {"account_id": account_id}
    ).fetchone()
    if row is None or not row[0]:
        raise GuardianConsentRequired(account_id)


def training_granted(state: list[ConsentState]) -> bool:
    """Whether the current training state allows training use."""
    return any(s.purpose is Purpose.TRAINING and s.granted for s in state)


def _default_granted(purpose: Purpose, profile: PolicyProfile, guardian_required: bool) -> bool:
    if purpose is Purpose.TRAINING:
        return profile.training_consent_mode is TrainingConsentMode.OPT_OUT
    if purpose is Purpose.PROCESSING:
        return not guardian_required
    return False


def _record(row: tuple[Any, ...]) -> ConsentRecord:
    consent_id, account_id, purpose, granted, method, source, policy_version, recorded_at, actor_key_id = row
    return ConsentRecord(
        consent_id=consent_id,
        account_id=account_id,
        purpose=Purpose(purpose),
        granted=granted,
        method=Method(method),
        source=source,
        policy_version=policy_version,
        recorded_at=recorded_at,
        actor_key_id=actor_key_id,
    )
