"""Registration of a new account: the account, its balance and its initial grant, in one transaction.

Its own module so that `accounts` needs nothing of `credits` (credits check consent, and
consent reads accounts: the dependency runs one way only).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from control_plane import accounts, credits
from control_plane.accounts import Account, AgeEvidence, Tier, Visibility
from control_plane.audit import Actor
from control_plane.db.pool import Connection
from control_plane.errors import InvalidArgument


def register_account(
    conn: Connection,
    *,
    tenant_id: UUID,
    evidence: AgeEvidence,
    minimum_age: int,
    default_visibility: Visibility,
    tier: Tier = Tier.FREE,
    initial_credits: int = 0,
    guardian_age: int | None = None,
    actor: Actor,
    now: datetime,
) -> tuple[Account, credits.Balance]:
    """Creates an account (see `accounts.create_account`) with its balance and initial grant.

    Args:
        initial_credits: Credits granted in the same transaction, 0..credits.MAX_GRANT.
        Everything else as `accounts.create_account` takes it.

    Returns:
        The account and its balance after the initial grant.

    Raises:
        InvalidArgument: Bad age evidence or credits out of range.
        FailedPrecondition: Under the minimum age.
    """
    if not 0 <= initial_credits <= credits.MAX_GRANT:
        raise InvalidArgument("initial_credits", f"must be 0..{credits.MAX_GRANT}")
    with conn.transaction():
        account = accounts.create_account(
            conn,
            tenant_id=tenant_id,
            evidence=evidence,
            minimum_age=minimum_age,
            default_visibility=default_visibility,
            tier=tier,
            guardian_age=guardian_age,
            actor=actor,
            now=now,
        )
        balance = credits.open_balance(conn, account.account_id)
        if initial_credits > 0:
            balance = credits.grant_credits(
                conn,
                tenant_id=tenant_id,
                account_id=account.account_id,
                amount=initial_credits,
                reason="initial credits",
                actor=actor,
                now=now,
            )
    return account, balance
