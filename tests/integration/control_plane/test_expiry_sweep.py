"""`expire_reservations`, the sweeper's step: what expires, when, and what it gives back."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from control_plane import credits
from control_plane.audit import SYSTEM
from control_plane.db.pool import Connection, Pool
from tests.integration.control_plane._support import CLOCK_START, adult_account

TTL = timedelta(seconds=60)


def _account_with(conn: Connection, credit: int) -> tuple[UUID, UUID]:
    return adult_account(conn, tenant_name="sweep", credits=credit)


def _reserve(conn: Connection, tenant_id: UUID, account_id: UUID, amount: int) -> credits.Reservation:
    reservation, _ = credits.reserve_credits(
        conn,
        tenant_id=tenant_id,
        account_id=account_id,
        amount=amount,
        ttl=TTL,
        purpose="",
        actor=SYSTEM,
        now=CLOCK_START,
    )
    return reservation


def test_held_reservations_expire_only_after_their_expiry_instant(pool: Pool) -> None:
    with pool.connection() as conn:
        tenant_id, account_id = _account_with(conn, 10)
        reservation = _reserve(conn, tenant_id, account_id, 4)
        assert credits.expire_reservations(conn, reservation.expires_at) == 0
        assert credits.expire_reservations(conn, reservation.expires_at + timedelta(microseconds=1)) == 1
        expired = credits.get_reservation(conn, tenant_id=tenant_id, reservation_id=reservation.reservation_id)
        balance = credits.get_balance(conn, tenant_id=tenant_id, account_id=account_id)
        audit = conn.execute("SELECT actor_key_id, target_id FROM audit_log WHERE action = 'credits.expire'").fetchall()
    assert expired.state is credits.ReservationState.EXPIRED
    assert (balance.total, balance.held) == (10, 0)
    assert audit == [(None, str(reservation.reservation_id))]


def test_sweeping_works_in_batches_and_leaves_settled_reservations_alone(pool: Pool) -> None:
    with pool.connection() as conn:
        tenant_id, account_id = _account_with(conn, 100)
        held = [_reserve(conn, tenant_id, account_id, 1) for _ in range(5)]
        committed = _reserve(conn, tenant_id, account_id, 10)
        credits.commit_reservation(
            conn, tenant_id=tenant_id, reservation_id=committed.reservation_id, actor=SYSTEM, now=CLOCK_START
        )
        later = CLOCK_START + TTL * 2
        assert credits.expire_reservations(conn, later, limit=2) == 2
        assert credits.expire_reservations(conn, later, limit=2) == 2
        assert credits.expire_reservations(conn, later, limit=2) == 1
        assert credits.expire_reservations(conn, later, limit=2) == 0
        states = {
            credits.get_reservation(conn, tenant_id=tenant_id, reservation_id=r.reservation_id).state for r in held
        }
        balance = credits.get_balance(conn, tenant_id=tenant_id, account_id=account_id)
        committed_state = credits.get_reservation(
            conn, tenant_id=tenant_id, reservation_id=committed.reservation_id
        ).state
    assert states == {credits.ReservationState.EXPIRED}
    assert committed_state is credits.ReservationState.COMMITTED
    assert (balance.total, balance.held) == (90, 0)
