"""Accounts: creation behind the age gate, lookup within a tenant, activity tracking.

Personal data (birth date, attested age) goes to `account_personal`, apart from the account
row, so an erasure can delete it and leave a pseudonymous tombstone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from control_plane.audit import Actor, AuditRecord, list_account_audit, record_audit
from control_plane.db.pool import Connection, expect_row
from control_plane.errors import AccountNotActive, FailedPrecondition, InvalidArgument, NotFound

ACCOUNT_COLUMNS = "account_id, tenant_id, tier, status, default_visibility, created_at, last_active_at"

MAX_AGE = 150

ADULT_AGE = 18
"""Account holders younger than this are minors: their content is never used for training."""


def is_minor(age: int) -> bool:
    """Whether an account holder of `age` (whole years) is a minor."""
    return age < ADULT_AGE


class Tier(StrEnum):
    """Billing tier; premium accounts are exempt from the inactivity purge."""

    FREE = "free"
    PREMIUM = "premium"


class AccountStatus(StrEnum):
    """Lifecycle of an account."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    ERASED = "erased"


class Visibility(StrEnum):
    """Who can see a piece of content."""

    PRIVATE = "private"
    PUBLIC = "public"


@dataclass(frozen=True)
class Account:
    """An account row (no personal data)."""

    account_id: UUID
    tenant_id: UUID
    tier: Tier
    status: AccountStatus
    default_visibility: Visibility
    created_at: datetime
    last_active_at: datetime


@dataclass(frozen=True)
class AgeEvidence:
    """What the caller knows about the user's age: a birth date, an attested age, or both."""

    birth_date: date | None = None
    age_attested: int | None = None
    """Whole years, 1..150."""


def age_on(birth_date: date, day: date) -> int:
    """Returns the age in whole years on `day` of someone born on `birth_date`.

    Someone born on 29 February turns a year older on 1 March in non-leap years.
    """
    had_birthday = (day.month, day.day) >= (birth_date.month, birth_date.day)
    return day.year - birth_date.year - (0 if had_birthday else 1)


def check_age(evidence: AgeEvidence, *, today: date, minimum_age: int) -> int:
    """Applies the age gate and returns the age it used.

    A birth date wins over an attested age when both are given (it is the stronger evidence).

    Raises:
        InvalidArgument: Neither is given, the birth date is in the future or implausibly
            old, or the attested age is out of 1..150.
        FailedPrecondition: The user is younger than `minimum_age` (reason UNDER_MINIMUM_AGE).
    """
    # Checked even beside a birth date: it is stored either way (a smallint column).
    if evidence.age_attested is not None and not 1 <= evidence.age_attested <= MAX_AGE:
        raise InvalidArgument("age_attested", f"must be 1..{MAX_AGE}")
    if evidence.birth_date is not None:
        if evidence.birth_date > today:
            raise InvalidArgument("birth_date", "is in the future")
        age = age_on(evidence.birth_date, today)
        if age > MAX_AGE:
            raise InvalidArgument("birth_date", f"gives an age over {MAX_AGE}")
    elif evidence.age_attested is not None:
        age = evidence.age_attested
    else:
        raise InvalidArgument("birth_date", "is required (YYYY-MM-DD) unless age_attested is set")
    if age < minimum_age:
        raise FailedPrecondition(
            f"account holders must be at least {minimum_age} years old; nothing was stored",
            reason="UNDER_MINIMUM_AGE",
        )
    return age


def create_account(
    conn: Connection,
    *,
    tenant_id: UUID,
    evidence: AgeEvidence,
    minimum_age: int,
    default_visibility: Visibility,
    tier: Tier = Tier.FREE,
    guardian_age: int | None = None,
    actor: Actor,
    now: datetime,
) -> Account:
    """Creates an account with its age evidence and audit row, in one transaction.

    The age gate runs first: an account under `minimum_age` leaves no row anywhere. The
    account has no balance yet: `registration.register_account` opens it in the same
    transaction (credits depend on accounts, not the other way round).

    Args:
        conn: Connection, in a transaction or not (a nested one becomes a savepoint).
        tenant_id: Tenant the account belongs to.
        evidence: Birth date and/or attested age.
        minimum_age: Youngest age allowed, in years.
        default_visibility: Visibility of new content left unspecified.
        tier: Billing tier.
        guardian_age: Users younger than this are stored with their age evidence alone and
            cannot generate until a guardian consents; None turns the rule off.
        actor: Who creates it.
        now: Creation time; also the day the age is computed on (UTC).

    Raises:
        InvalidArgument: Bad age evidence.
        FailedPrecondition: Under the minimum age.
    """
    age = check_age(evidence, today=now.date(), minimum_age=minimum_age)
    guardian_required = guardian_age is not None and age < guardian_age
    with conn.transaction():
        row = conn.execute(
            f"""
            INSERT INTO accounts (tenant_id, tier, default_visibility, created_at, last_active_at)
            VALUES (%s, %s, %s, %s, %s)
            RETURNING {ACCOUNT_COLUMNS}
            """,
            (tenant_id, tier.value, default_visibility.value, now, now),
        ).fetchone()
        account = account_from_row(expect_row(row))
        conn.execute(
            """
            INSERT INTO account_personal (account_id, birth_date, age_attested, guardian_required, recorded_at)
            VALUES (%s, %s, %s, %s, %s)
            """,
            (account.account_id, evidence.birth_date, evidence.age_attested, guardian_required, now),
        )
        details = {"account_id": str(account.account_id), "tier": tier.value}
        record_audit(conn, actor, now, "account.create", "account", account.account_id, details)
    return account


def audit_trail(
    conn: Connection, *, tenant_id: UUID, account_id: UUID, limit: int, before_id: int | None = None
) -> list[AuditRecord]:
    """The audit rows about an account of the tenant, newest first (see `audit.list_account_audit`).

    Raises:
        NotFound: No such account in the tenant (another tenant's ids cannot be probed).
    """
    get_account(conn, tenant_id=tenant_id, account_id=account_id)
    return list_account_audit(conn, account_id, limit=limit, before_id=before_id)


def get_account(conn: Connection, *, tenant_id: UUID, account_id: UUID) -> Account:
    """Returns an account of the tenant.

    Raises:
        NotFound: No such account in this tenant (another tenant's account included, so ids
            cannot be probed across tenants).
    """
    row = conn.execute(
        f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = %s AND tenant_id = %s", (account_id, tenant_id)
    ).fetchone()
    if row is None:
        raise NotFound(f"account {account_id} not found")
    return account_from_row(row)


def current_age(conn: Connection, account_id: UUID, today: date) -> int | None:
    """The account holder's age in whole years on `today`, from the stored evidence.

    An attested age is carried forward by the whole years since it was recorded. None when
    no evidence is stored (an erased account).
    """
    row = conn.execute(
        f"SELECT {AGE_EVIDENCE_COLUMNS} FROM account_personal WHERE account_id = %s", (account_id,)
    ).fetchone()
    if row is None:
        return None
    birth_date, age_attested, recorded_at = row
    return age_from_evidence(birth_date, age_attested, recorded_at, today)


AGE_EVIDENCE_COLUMNS = "birth_date, age_attested, recorded_at"
"""The `account_personal` columns `age_from_evidence` reads, in its argument order."""


def age_from_evidence(
    birth_date: date | None, age_attested: int | None, recorded_at: datetime | None, today: date
) -> int | None:
    """The age in whole years on `today` from an `account_personal` row's evidence: the birth
    date, else the attested age carried forward by the whole years since it was recorded.
    None when there is neither (an erased account)."""
    if birth_date is not None:
        return age_on(birth_date, today)
    if age_attested is None or recorded_at is None:
        return None
    return int(age_attested) + max(0, age_on(recorded_at.date(), today))


def require_active(account: Account) -> None:
    """Raises FailedPrecondition unless the account may generate and store content."""
    if account.status is not AccountStatus.ACTIVE:
        raise AccountNotActive(account.account_id, account.status.value)


def set_default_visibility(
    conn: Connection, *, tenant_id: UUID, account_id: UUID, visibility: Visibility, actor: Actor, now: datetime
) -> Account:
    """Sets the visibility of the account's future content only (seed 003's "set your default"),
    with the audit row; existing items keep theirs (`content.set_account_visibility` changes those).

    Raises:
        NotFound: No such account in the tenant.
        FailedPrecondition: The account was erased (reason ACCOUNT_ERASED).
    """
    with conn.transaction():
        account = get_account(conn, tenant_id=tenant_id, account_id=account_id)
        if account.status is AccountStatus.ERASED:
            raise FailedPrecondition(f"account {account_id} was erased", reason="ACCOUNT_ERASED")
        write_default_visibility(conn, account_id, visibility)
        details = {"account_id": str(account_id), "default_visibility": visibility.value}
        record_audit(conn, actor, now, "account.default_visibility", "account", account_id, details)
    return replace(account, default_visibility=visibility)


def write_default_visibility(conn: Connection, account_id: UUID, visibility: Visibility) -> None:
    """The default-visibility write alone, for callers that audit it with a larger change."""
    conn.execute("UPDATE accounts SET default_visibility = %s WHERE account_id = %s", (visibility.value, account_id))


def touch_last_active(conn: Connection, account_id: UUID, now: datetime) -> None:
    """Records activity (a generation or store); never moves the time backwards."""
    conn.execute(
        "UPDATE accounts SET last_active_at = greatest(last_active_at, %s) WHERE account_id = %s",
        (now, account_id),
    )


def account_from_row(row: tuple[Any, ...]) -> Account:
    """An `Account` from a row of ACCOUNT_COLUMNS."""
    account_id, tenant_id, tier, status, visibility, created_at, last_active_at = row
    return Account(
        account_id=account_id,
        tenant_id=tenant_id,
        tier=Tier(tier),
        status=AccountStatus(status),
        default_visibility=Visibility(visibility),
        created_at=created_at,
        last_active_at=last_active_at,
    )
