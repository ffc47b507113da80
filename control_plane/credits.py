"""Credits: an append-only ledger, a balance cache, and reservations held until settled.

Invariants, kept in every transaction that touches credits and checked by the schema:
- `credit_balances.total` is the sum of the account's ledger deltas;
- `credit_balances.held` is the sum of the account's `held` reservations, and
  `credit_balances.held_count` their number;
- `0 <= held <= total`, so what a reservation can take (`total - held`) is never negative.

A reservation holds credits while a generation runs; commit charges them (a negative ledger
row), release or expiry returns them. Reserving is one conditional UPDATE, so concurrent
callers racing for a small balance can never overspend it.

Reserve and commit, the hot pair of every generation, are one SQL statement each (data-
modifying CTEs: balance, reservation, ledger and audit rows together), so on the pool's
autocommit connections each is one round trip and one commit; the balance row's lock is held
for one statement, not a multi-statement transaction. Rarer paths (refusals, idempotency
keys, release, expiry) use explicit transactions.

Every function scopes ids by tenant: another tenant's account or reservation is NotFound.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NoReturn
from uuid import UUID

from control_plane.audit import SYSTEM, Actor, AuditEntry, actor_parameters, audit_rows_sql, record_audit, record_audits
from control_plane.consent import PROCESSING_ALLOWED_SQL, require_may_process
from control_plane.db.pool import Connection, expect_row
from control_plane.errors import (
    Aborted,
    AccountNotActive,
    FailedPrecondition,
    InsufficientCredits,
    InvalidArgument,
    NotFound,
    TooManyConcurrentRequests,
)

MAX_GRANT = 10**12
"""Largest single grant, in credits."""

MAX_RESERVATION = 10**9
"""Largest single reservation, in credits."""

MAX_REASON_CHARS = 200
"""Longest grant reason or reservation purpose."""

MAX_IDEMPOTENCY_KEY_CHARS = 128
"""Longest idempotency key; keys are printable ASCII (space to tilde)."""

IN_FLIGHT_RETRY_S = 1.0
"""Retry hint sent when a request with the same idempotency key is still in flight."""

RESERVATION_COLUMNS = "reservation_id, account_id, amount, state, purpose, created_at, expires_at, settled_at"
_PROCESSING_ALLOWED = PROCESSING_ALLOWED_SQL.format(account_column="a.account_id")
_LEDGER_COLUMNS = "entry_id, account_id, delta, kind, reservation_id, reason, created_at"
_UNBOUNDED = 2**31 - 1  # held_count bound when no concurrency limit applies


class ReservationState(StrEnum):
    """Life of a reservation: held until committed, released or expired."""

    HELD = "held"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Balance:
    """An account's credits. `available` is what a new reservation can take."""

    account_id: UUID
    total: int
    held: int

    @property
    def available(self) -> int:
        """Credits not held by open reservations."""
        return self.total - self.held


@dataclass(frozen=True)
class Reservation:
    """A hold on credits."""

    reservation_id: UUID
    account_id: UUID
    amount: int
    state: ReservationState
    purpose: str
    created_at: datetime
    expires_at: datetime
    settled_at: datetime | None


@dataclass(frozen=True)
class ConcurrencyLimit:
    """The bound on an account's generations in flight: its held, unexpired reservations.

    Attributes:
        max_held: Most held reservations at once, >= 1.
        retry_after_s: Retry hint sent when the bound is reached, > 0.
    """

    max_held: int
    retry_after_s: float


@dataclass(frozen=True)
class IdempotencyKey:
    """Makes a reservation retry-safe: one live use of `key` per account.

    Attributes:
        key: Chosen by the caller, 1..128 printable ASCII characters.
        fingerprint: SHA-256 (32 bytes) of the request the key was sent with; a retry must
            send the same one.
    """

    key: str
    fingerprint: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.key) <= MAX_IDEMPOTENCY_KEY_CHARS or not all(" " <= c <= "~" for c in self.key):
            raise InvalidArgument(
                "idempotency_key", f"must be 1..{MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters"
            )
        if len(self.fingerprint) != 32:
            raise InvalidArgument("idempotency_key", "needs a 32-byte SHA-256 request fingerprint")


@dataclass(frozen=True)
class Reserved:
    """What an idempotent reservation returns."""

    reservation: Reservation
    balance: Balance
    replayed_content_ids: tuple[UUID, ...] | None
    """None for a new hold; for a retry of a committed request, the content its
    reservation paid for (in content id order), and `reservation` is that committed one."""


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger row: a grant (positive) or a charge (negative)."""

    entry_id: int
    account_id: UUID
    delta: int
    kind: str
    reservation_id: UUID | None
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class LedgerPage:
    """A page of ledger entries, newest first."""

    entries: list[LedgerEntry]
    next_before_entry_id: int | None
    """Pass as `before_entry_id` for the next page; None when there is none."""


def open_balance(conn: Connection, account_id: UUID) -> Balance:
    """Creates the zero balance of a new account; call it in the account's creating transaction."""
    conn.execute("INSERT INTO credit_balances (account_id, total, held) VALUES (%s, 0, 0)", (account_id,))
    return Balance(account_id=account_id, total=0, held=0)


def grant_credits(
    conn: Connection,
    *,
    tenant_id: UUID,
    account_id: UUID,
    amount: int,
    reason: str,
    actor: Actor,
    now: datetime,
) -> Balance:
    """Adds credits to an account: a ledger grant and the balance, in one transaction.

    Args:
        amount: Credits, 1..MAX_GRANT.
        reason: Why, 0..200 characters; kept in the ledger.

    Raises:
        InvalidArgument: Amount or reason out of range.
        NotFound: No such account in the tenant.
    """
    _check_amount("amount", amount, MAX_GRANT)
    _check_text("reason", reason, MAX_REASON_CHARS)
    with conn.transaction():
        row = conn.execute(
            """
            UPDATE credit_balances b SET total = b.total + %(amount)s
            FROM accounts a
            WHERE b.account_id = %(account_id)s AND a.account_id = b.account_id AND a.tenant_id = %(tenant_id)s
            RETURNING b.total, b.held
            """,
            {"amount": amount, "account_id": account_id, "tenant_id": tenant_id},
        ).fetchone()
        if row is None:
            raise NotFound(f"account {account_id} not found")
        entry_id = _append_ledger(conn, account_id, amount, "grant", None, reason, now)
        details = {"account_id": str(account_id), "amount": amount}
        record_audit(conn, actor, now, "credits.grant", "ledger_entry", entry_id, details)
    return Balance(account_id=account_id, total=row[0], held=row[1])


def get_balance(conn: Connection, *, tenant_id: UUID, account_id: UUID) -> Balance:
    """Returns an account's balance.

    Raises:
        NotFound: No such account in the tenant.
    """
    row = conn.execute(
        """
        SELECT b.total, b.held FROM credit_balances b JOIN accounts a USING (account_id)
        WHERE b.account_id = %s AND a.tenant_id = %s
        """,
        (account_id, tenant_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"account {account_id} not found")
    return Balance(account_id=account_id, total=row[0], held=row[1])


def list_ledger(
    conn: Connection,
    *,
    tenant_id: UUID,
    account_id: UUID,
    limit: int,
    before_entry_id: int | None = None,
) -> LedgerPage:
    """Returns up to `limit` ledger entries of an account, newest first.

    Args:
        limit: Page size, >= 1.
        before_entry_id: Only entries older than this one (keyset pagination); None for
            the newest.

    Raises:
        NotFound: No such account in the tenant.
    """
    # Raises NotFound for another tenant's account; an empty page would not tell it apart.
    get_balance(conn, tenant_id=tenant_id, account_id=account_id)
    rows = conn.execute(
        f"""
        SELECT {_LEDGER_COLUMNS} FROM credit_ledger
        WHERE account_id = %(account_id)s AND (%(before)s::bigint IS NULL OR entry_id < %(before)s)
        ORDER BY entry_id DESC
        LIMIT %(limit)s
        """,
        {"account_id": account_id, "before": before_entry_id, "limit": limit + 1},
    ).fetchall()
    # One row more than asked tells whether another page exists, so the last page never
    # hands out a token that leads to an empty page.
    entries = [LedgerEntry(*row) for row in rows[:limit]]
    has_more = len(rows) > limit
    return LedgerPage(entries=entries, next_before_entry_id=entries[-1].entry_id if has_more else None)


def reserve_credits(
    conn: Connection,
    *,
    tenant_id: UUID,
    account_id: UUID,
    amount: int,
    ttl: timedelta,
    purpose: str,
    actor: Actor,
    now: datetime,
    concurrency: ConcurrencyLimit | None = None,
) -> tuple[Reservation, Balance]:
    """Holds `amount` credits of an account until commit, release or `now + ttl`.

    Race-free: the hold is one statement whose `UPDATE ... WHERE total - held >= amount AND
    held_count < max_held` locks the account's balance row, so of many concurrent callers
    exactly as many succeed as the balance (and the concurrency bound) allows, across replicas.
    `held_count` also counts holds past their expiry that no sweep has expired yet; when the
    bound refuses, those are expired first and the hold is tried once more, so expired holds
    never count.

    Args:
        amount: Credits, 1..MAX_RESERVATION.
        ttl: How long the hold lasts, > 0.
        purpose: What the credits are for, 0..200 characters; becomes the charge's reason.
        concurrency: Bound on the account's held, unexpired reservations; None for none.

    Raises:
        InvalidArgument: Amount, ttl or purpose out of range.
        NotFound: No such account in the tenant.
        AccountNotActive: The account is suspended or erased.
        GuardianConsentRequired: The account needs a guardian's consent first.
        InsufficientCredits: Fewer than `amount` credits are available.
        TooManyConcurrentRequests: The account holds `concurrency.max_held` unexpired reservations.
    """
    _check_reservation(amount, ttl, purpose)
    # The fast path: one statement (balance, reservation and audit row), committed on its own
    # on an autocommit connection. Anything unusual takes the transaction below.
    row = conn.execute(
        f"""
        WITH balance AS (
            {_HOLD_BALANCE_SQL}
        ), reservation AS (
            INSERT INTO reservations (account_id, amount, purpose, actor_key_id, created_at, expires_at)
            SELECT account_id, %(amount)s, %(purpose)s, %(actor_key_id)s, %(now)s, %(expires_at)s FROM balance
            RETURNING {RESERVATION_COLUMNS}
        ), audit AS ({_RESERVE_AUDIT_SQL})
        SELECT r.*, b.total, b.held FROM reservation r CROSS JOIN balance b
        """,
        {
            **_hold_parameters(tenant_id, account_id, amount, concurrency),
            **actor_parameters(actor),
            "purpose": purpose,
            "now": now,
            "expires_at": now + ttl,
            "expires_at_iso": (now + ttl).isoformat(),
        },
    ).fetchone()
    if row is not None:
        return reservation_from_row(row[:-2]), Balance(account_id=account_id, total=row[-2], held=row[-1])
    with conn.transaction():
        if concurrency is not None:
            _expire_due_holds(conn, account_id, now)
        return _hold(conn, tenant_id, account_id, amount, ttl, purpose, actor, now, concurrency, None)


def reserve_credits_idempotently(
    conn: Connection,
    *,
    tenant_id: UUID,
    account_id: UUID,
    amount: int,
    ttl: timedelta,
    purpose: str,
    actor: Actor,
    now: datetime,
    idempotency: IdempotencyKey,
    concurrency: ConcurrencyLimit | None = None,
) -> Reserved:
    """`reserve_credits`, made safe to retry with the caller's idempotency key.

    Keys are per account. The first use of a key holds credits as `reserve_credits` does and
    records the key with the request's fingerprint. A later call with the same key:
    - after the reservation was committed, with the same fingerprint: holds nothing and
      returns the committed reservation with the content ids it paid for (a replay);
    - while it is still held: Aborted (retry later to get the result);
    - with a different fingerprint while held or committed: FailedPrecondition;
    - after it was released or expired: the key is free, and this is a new first use.
    Keys live as long as their reservation row (the ledger keeps committed ones).

    Raises:
        Everything `reserve_credits` raises, and:
        Aborted: The key's first request is still in flight (reason IDEMPOTENCY_KEY_IN_FLIGHT).
        FailedPrecondition: The key was used with a different request (reason
            IDEMPOTENCY_KEY_REUSED).
    """
    _check_reservation(amount, ttl, purpose)
    with conn.transaction():
        # Expiring the account's overdue holds first frees their keys (and their slots).
        _expire_due_holds(conn, account_id, now)
        row = conn.execute(
            f"""
            SELECT {RESERVATION_COLUMNS}, request_fingerprint FROM reservations
            WHERE account_id = %(account_id)s AND idempotency_key = %(key)s AND state IN ('held', 'committed')
              AND account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %(tenant_id)s)
            FOR UPDATE
            """,
            {"account_id": account_id, "key": idempotency.key, "tenant_id": tenant_id},
        ).fetchone()
        if row is not None:
            earlier = reservation_from_row(row[:-1])
            if bytes(row[-1]) != idempotency.fingerprint:
                raise FailedPrecondition(
                    "idempotency_key was already used with a different request: "
                    "send a new key for a new request, or resend the original request to get its result",
                    reason="IDEMPOTENCY_KEY_REUSED",
                )
            if earlier.state is ReservationState.HELD:
                raise _in_flight()
            content_ids = conn.execute(
                "SELECT content_id FROM content WHERE reservation_id = %s AND deleted_at IS NULL ORDER BY content_id",
                (earlier.reservation_id,),
            ).fetchall()
            balance = get_balance(conn, tenant_id=tenant_id, account_id=account_id)
            return Reserved(earlier, balance, tuple(content_id for (content_id,) in content_ids))
        reservation, balance = _hold(
            conn, tenant_id, account_id, amount, ttl, purpose, actor, now, concurrency, idempotency
        )
    return Reserved(reservation, balance, None)


# The audit rows of the one-statement reserve and commit: the same rows `record_audit` writes on
# the transactional paths.
_RESERVE_AUDIT_SQL = audit_rows_sql(
    action="credits.reserve",
    target_type="reservation",
    target_id="reservation_id::text",
    details=(
        "jsonb_build_object('account_id', account_id::text, 'amount', amount, 'expires_at', %(expires_at_iso)s::text)"
    ),
    source="reservation",
)
_COMMIT_AUDIT_SQL = audit_rows_sql(
    action="credits.commit",
    target_type="reservation",
    target_id="reservation_id::text",
    details="jsonb_build_object('account_id', account_id::text, 'amount', amount)",
    source="reservation",
)

# Takes the hold on the balance row; its row lock orders every hold of the account. Shared by
# the one-statement fast path and the transactional path.
_HOLD_BALANCE_SQL = f"""
    UPDATE credit_balances b SET held = b.held + %(amount)s, held_count = b.held_count + 1
    FROM accounts a
    WHERE b.account_id = %(account_id)s AND a.account_id = b.account_id
      AND a.tenant_id = %(tenant_id)s AND a.status = 'active'
      AND b.total - b.held >= %(amount)s
      AND b.held_count < %(max_held)s
      AND {_PROCESSING_ALLOWED}
    RETURNING b.account_id, b.total, b.held
"""


def _hold_parameters(
    tenant_id: UUID, account_id: UUID, amount: int, concurrency: ConcurrencyLimit | None
) -> dict[str, Any]:
    max_held = concurrency.max_held if concurrency is not None else _UNBOUNDED
    return {"tenant_id": tenant_id, "account_id": account_id, "amount": amount, "max_held": max_held}


def _hold(
    conn: Connection,
    tenant_id: UUID,
    account_id: UUID,
    amount: int,
    ttl: timedelta,
    purpose: str,
    actor: Actor,
    now: datetime,
    concurrency: ConcurrencyLimit | None,
    idempotency: IdempotencyKey | None,
) -> tuple[Reservation, Balance]:
    # Call inside a transaction.
    row = conn.execute(_HOLD_BALANCE_SQL, _hold_parameters(tenant_id, account_id, amount, concurrency)).fetchone()
    if row is None:
        _raise_why_not_reservable(
            conn, tenant_id=tenant_id, account_id=account_id, amount=amount, concurrency=concurrency
        )
    inserted = conn.execute(
        f"""
        INSERT INTO reservations (account_id, amount, purpose, actor_key_id, created_at, expires_at,
                                  idempotency_key, request_fingerprint)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (account_id, idempotency_key)
            WHERE idempotency_key IS NOT NULL AND state IN ('held', 'committed') DO NOTHING
        RETURNING {RESERVATION_COLUMNS}
        """,
        (
            account_id,
            amount,
            purpose,
            actor.key_id,
            now,
            now + ttl,
            idempotency.key if idempotency else None,
            idempotency.fingerprint if idempotency else None,
        ),
    ).fetchone()
    if inserted is None:
        # Another call with the same key inserted first (after our lookup): it is in flight.
        raise _in_flight()
    reservation = reservation_from_row(inserted)
    details = {"account_id": str(account_id), "amount": amount, "expires_at": reservation.expires_at.isoformat()}
    record_audit(conn, actor, now, "credits.reserve", "reservation", reservation.reservation_id, details)
    return reservation, Balance(account_id=account_id, total=row[1], held=row[2])


def _expire_due_holds(conn: Connection, account_id: UUID, now: datetime) -> None:
    # Call inside a transaction. Reservation rows first, then the balance: the order every
    # other writer of both (commit, release, the sweeper) locks them in.
    expired = conn.execute(
        """
        UPDATE reservations SET state = 'expired', settled_at = %(now)s
        WHERE account_id = %(account_id)s AND state = 'held' AND expires_at < %(now)s
        RETURNING reservation_id, amount
        """,
        {"account_id": account_id, "now": now},
    ).fetchall()
    if not expired:
        return
    conn.execute(
        "UPDATE credit_balances SET held = held - %s, held_count = held_count - %s WHERE account_id = %s",
        (sum(amount for _, amount in expired), len(expired), account_id),
    )
    details = [
        AuditEntry("credits.expire", "reservation", str(rid), {"account_id": str(account_id), "amount": amount})
        for rid, amount in expired
    ]
    record_audits(conn, SYSTEM, now, details)


def _in_flight() -> Aborted:
    return Aborted(
        f"a request with this idempotency_key is still in flight: retry in {IN_FLIGHT_RETRY_S:.0f} s to get its result",
        reason="IDEMPOTENCY_KEY_IN_FLIGHT",
        retry_after_s=IN_FLIGHT_RETRY_S,
    )


def _check_reservation(amount: int, ttl: timedelta, purpose: str) -> None:
    _check_amount("amount", amount, MAX_RESERVATION)
    _check_text("purpose", purpose, MAX_REASON_CHARS)
    if ttl <= timedelta(0):
        raise InvalidArgument("ttl_seconds", "must be positive")


def commit_reservation(
    conn: Connection,
    *,
    tenant_id: UUID,
    reservation_id: UUID,
    actor: Actor,
    now: datetime,
    account_id: UUID | None = None,
) -> tuple[Reservation, Balance]:
    """Charges a held reservation: a negative ledger row, and total and held both drop.

    One statement (reservation, balance, ledger and audit row): on an autocommit connection it
    commits on its own, inside a caller's transaction (content storage) it is part of that.
    The reservation's `UPDATE ... WHERE state = 'held'` locks it, so it is charged at most once.

    Args:
        account_id: When given, the reservation must belong to this account (else NotFound).
            Content storage uses it to charge the account whose content it stores.
        now: Commit time; a reservation past its expiry cannot be committed.

    Raises:
        NotFound: No such reservation in the tenant (or of `account_id`).
        FailedPrecondition: Already committed, released or expired (reason
            RESERVATION_SETTLED), or past its expiry (reason RESERVATION_EXPIRED).
    """
    row = conn.execute(
        f"""
        WITH {commit_ctes_sql()}
        SELECT r.*, b.total, b.held FROM reservation r CROSS JOIN balance b
        """,
        {
            "reservation_id": reservation_id,
            "tenant_id": tenant_id,
            "account_id": account_id,
            "now": now,
            **actor_parameters(actor),
        },
    ).fetchone()
    if row is None:
        raise_why_not_committed(conn, tenant_id=tenant_id, reservation_id=reservation_id, account_id=account_id)
    settled = reservation_from_row(row[:-2])
    return settled, Balance(account_id=settled.account_id, total=row[-2], held=row[-1])


def commit_ctes_sql(guard: str = "true") -> str:
    """The CTEs that charge a held reservation in one statement: `reservation` (the committed
    row, RESERVATION_COLUMNS), `balance` (the account's total and held after the charge), and
    the ledger and audit rows.

    For callers that commit as part of a larger statement (content storage); `commit_reservation`
    is the one-statement use. The statement's parameters must include `reservation_id`,
    `tenant_id`, `account_id` (NULL: any account of the tenant), `now` and those of
    `actor_parameters`. Nothing is charged unless the SQL condition `guard` holds.
    """
    return f"""
        reservation AS (
            UPDATE reservations SET state = 'committed', settled_at = %(now)s
            WHERE reservation_id = %(reservation_id)s AND state = 'held' AND expires_at >= %(now)s
              AND account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %(tenant_id)s)
              AND (%(account_id)s::uuid IS NULL OR account_id = %(account_id)s)
              AND {guard}
            RETURNING {RESERVATION_COLUMNS}
        ), balance AS (
            UPDATE credit_balances b
            SET total = b.total - r.amount, held = b.held - r.amount, held_count = b.held_count - 1
            FROM reservation r WHERE b.account_id = r.account_id
            RETURNING b.total, b.held
        ), ledger AS (
            INSERT INTO credit_ledger (account_id, delta, kind, reservation_id, reason, created_at)
            SELECT account_id, -amount, 'charge', reservation_id, purpose, %(now)s FROM reservation
        ), commit_audit AS ({_COMMIT_AUDIT_SQL})
    """


def raise_why_not_committed(
    conn: Connection, *, tenant_id: UUID, reservation_id: UUID, account_id: UUID | None
) -> NoReturn:
    """Raises why `commit_ctes_sql` charged nothing (its guard held).

    Raises:
        NotFound: No such reservation in the tenant (or of `account_id`).
        FailedPrecondition: Already settled (RESERVATION_SETTLED) or past its expiry (RESERVATION_EXPIRED).
    """
    reservation = _find_reservation(conn, tenant_id=tenant_id, reservation_id=reservation_id, account_id=account_id)
    _require_held(reservation)
    raise FailedPrecondition(
        f"reservation expired at {reservation.expires_at.isoformat()}: reserve credits again",
        reason="RESERVATION_EXPIRED",
    )


def release_reservation(
    conn: Connection,
    *,
    tenant_id: UUID,
    reservation_id: UUID,
    actor: Actor,
    now: datetime,
    account_id: UUID | None = None,
) -> tuple[Reservation, Balance]:
    """Returns a held reservation's credits; nothing is charged. Allowed after expiry too.

    Args:
        account_id: When given, the reservation must belong to this account (else NotFound).

    Raises:
        NotFound: No such reservation in the tenant (or of `account_id`).
        FailedPrecondition: Already committed, released or expired (reason RESERVATION_SETTLED).
    """
    with conn.transaction():
        reservation = _find_reservation(
            conn, tenant_id=tenant_id, reservation_id=reservation_id, account_id=account_id, lock=True
        )
        _require_held(reservation)
        settled = _settle(conn, reservation, ReservationState.RELEASED, now)
        total, held = expect_row(
            conn.execute(
                """
                UPDATE credit_balances SET held = held - %s, held_count = held_count - 1
                WHERE account_id = %s RETURNING total, held
                """,
                (reservation.amount, reservation.account_id),
            ).fetchone()
        )
        details = {"account_id": str(reservation.account_id), "amount": reservation.amount}
        record_audit(conn, actor, now, "credits.release", "reservation", reservation_id, details)
    return settled, Balance(account_id=reservation.account_id, total=total, held=held)


def get_reservation(conn: Connection, *, tenant_id: UUID, reservation_id: UUID) -> Reservation:
    """Returns a reservation of the tenant.

    Raises:
        NotFound: No such reservation in the tenant.
    """
    row = conn.execute(
        f"""
        SELECT {RESERVATION_COLUMNS} FROM reservations
        WHERE reservation_id = %s AND account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %s)
        """,
        (reservation_id, tenant_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"reservation {reservation_id} not found")
    return reservation_from_row(row)


def expire_reservations(conn: Connection, now: datetime, limit: int = 1000) -> int:
    """Expires up to `limit` held reservations whose expiry is before `now`; for the sweeper.

    Idempotent and safe to run concurrently: rows another sweeper (or a commit) holds are
    skipped, not waited for. Balances are locked in account order, so two sweepers cannot
    deadlock on accounts they share.

    Returns:
        How many reservations this call expired; call again while it returns `limit`.
    """
    if limit < 1:
        raise InvalidArgument("limit", "must be >= 1")
    with conn.transaction():
        # `= ANY(ARRAY(... LIMIT n FOR UPDATE SKIP LOCKED))` keeps the plan an index scan on
        # the partial expiry index; `IN (SELECT ... LIMIT n)` can turn into a full scan.
        expired = conn.execute(
            """
            UPDATE reservations SET state = 'expired', settled_at = %(now)s
            WHERE reservation_id = ANY(ARRAY(
                SELECT reservation_id FROM reservations
                WHERE state = 'held' AND expires_at < %(now)s
                ORDER BY expires_at
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED
            ))
            RETURNING reservation_id, account_id, amount
            """,
            {"now": now, "limit": limit},
        ).fetchall()
        if not expired:
            return 0
        held_by_account: dict[UUID, int] = {}
        holds_by_account: dict[UUID, int] = {}
        for _, account_id, amount in expired:
            held_by_account[account_id] = held_by_account.get(account_id, 0) + amount
            holds_by_account[account_id] = holds_by_account.get(account_id, 0) + 1
        accounts = sorted(held_by_account)
        conn.execute(
            "SELECT 1 FROM credit_balances WHERE account_id = ANY(%s) ORDER BY account_id FOR UPDATE",
            (accounts,),
        )
        conn.execute(
            """
            UPDATE credit_balances b SET held = b.held - s.amount, held_count = b.held_count - s.holds
            FROM unnest(%s::uuid[], %s::bigint[], %s::int[]) AS s (account_id, amount, holds)
            WHERE b.account_id = s.account_id
            """,
            (accounts, [held_by_account[a] for a in accounts], [holds_by_account[a] for a in accounts]),
        )
        record_audits(
            conn,
            SYSTEM,
            now,
            [
                AuditEntry("credits.expire", "reservation", str(rid), {"account_id": str(aid), "amount": amount})
                for rid, aid, amount in expired
            ],
        )
    return len(expired)


def _raise_why_not_reservable(
    conn: Connection, *, tenant_id: UUID, account_id: UUID, amount: int, concurrency: ConcurrencyLimit | None
) -> NoReturn:
    # The conditional UPDATE matched nothing; find out which condition failed.
    row = conn.execute(
        """
        SELECT a.status, b.total, b.held, b.held_count FROM accounts a JOIN credit_balances b USING (account_id)
        WHERE a.account_id = %s AND a.tenant_id = %s
        """,
        (account_id, tenant_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"account {account_id} not found")
    status, total, held, held_count = row
    if status != "active":
        raise AccountNotActive(account_id, status)
    require_may_process(conn, account_id)
    if total - held < amount or concurrency is None or held_count < concurrency.max_held:
        raise InsufficientCredits(available=total - held, requested=amount)
    raise TooManyConcurrentRequests(concurrency.max_held, concurrency.retry_after_s)


def _find_reservation(
    conn: Connection, *, tenant_id: UUID, reservation_id: UUID, account_id: UUID | None, lock: bool = False
) -> Reservation:
    row = conn.execute(
        f"""
        SELECT {RESERVATION_COLUMNS} FROM reservations
        WHERE reservation_id = %(reservation_id)s
          AND account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %(tenant_id)s)
          AND (%(account_id)s::uuid IS NULL OR account_id = %(account_id)s)
        {"FOR UPDATE" if lock else ""}
        """,
        {"reservation_id": reservation_id, "tenant_id": tenant_id, "account_id": account_id},
    ).fetchone()
    if row is None:
        owner = f" of account {account_id}" if account_id is not None else ""
        raise NotFound(f"reservation {reservation_id}{owner} not found")
    return reservation_from_row(row)


def _require_held(reservation: Reservation) -> None:
    if reservation.state is not ReservationState.HELD:
        raise FailedPrecondition(
            f"reservation {reservation.reservation_id} is already {reservation.state.value}: "
            "reserve credits again for a new charge",
            reason="RESERVATION_SETTLED",
        )


def _settle(conn: Connection, reservation: Reservation, state: ReservationState, now: datetime) -> Reservation:
    row = conn.execute(
        f"""
        UPDATE reservations SET state = %s, settled_at = %s WHERE reservation_id = %s
        RETURNING {RESERVATION_COLUMNS}
        """,
        (state.value, now, reservation.reservation_id),
    ).fetchone()
    return reservation_from_row(expect_row(row))


def _append_ledger(
    conn: Connection,
    account_id: UUID,
    delta: int,
    kind: str,
    reservation_id: UUID | None,
    reason: str,
    now: datetime,
) -> int:
    row = conn.execute(
        """
        INSERT INTO credit_ledger (account_id, delta, kind, reservation_id, reason, created_at)
        VALUES (%s, %s, %s, %s, %s, %s)
        RETURNING entry_id
        """,
        (account_id, delta, kind, reservation_id, reason, now),
    ).fetchone()
    return int(expect_row(row)[0])


def _check_amount(field: str, amount: int, maximum: int) -> None:
    if not 1 <= amount <= maximum:
        raise InvalidArgument(field, f"must be 1..{maximum} credits")


def _check_text(field: str, text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise InvalidArgument(field, f"must be at most {max_chars} characters")


def reservation_from_row(row: tuple[Any, ...]) -> Reservation:
    """A `Reservation` from a row of RESERVATION_COLUMNS."""
    reservation_id, account_id, amount, state, purpose, created_at, expires_at, settled_at = row
    return Reservation(
        reservation_id=reservation_id,
        account_id=account_id,
        amount=amount,
        state=ReservationState(state),
        purpose=purpose,
        created_at=created_at,
        expires_at=expires_at,
        settled_at=settled_at,
    )
