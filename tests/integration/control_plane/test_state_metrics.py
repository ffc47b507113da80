"""Reservation and data-subject-request gauges reflect the database at scrape time."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CollectorRegistry

from control_plane.clock import ManualClock
from control_plane.db.pool import Pool
from control_plane.metrics import DatabaseStateCollector
from protos.atelier.v1 import control_plane_pb2


def _registry(pool: Pool, clock: ManualClock) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(DatabaseStateCollector(pool, clock))
    return registry


def test_held_reservations_and_their_age_are_reported(pool, clock, stub, operator, make_account) -> None:  # type: ignore[no-untyped-def]
    registry = _registry(pool, clock)
    assert registry.get_sample_value("atelier_credit_reservations_held") == 0
    assert registry.get_sample_value("atelier_export_rows_total") == 0
    assert registry.get_sample_value("atelier_credit_reservation_oldest_held_age_seconds") == 0
    account_id = make_account(credits=5)
    for _ in range(2):
        stub.ReserveCredits(
            control_plane_pb2.ReserveCreditsRequest(account_id=account_id, amount=1), metadata=operator.metadata
        )
    clock.advance(timedelta(seconds=90))
    assert registry.get_sample_value("atelier_credit_reservations_held") == 2
    assert registry.get_sample_value("atelier_credit_reservation_oldest_held_age_seconds") == 90


def test_open_and_overdue_requests_are_counted_by_kind(pool, clock, make_account) -> None:  # type: ignore[no-untyped-def]
    registry = _registry(pool, clock)
    account_id = make_account()
    now = clock.now()
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO dsr_requests (account_id, kind, received_at, due_at) VALUES (%s, 'export', %s, %s), "
            "(%s, 'export', %s, %s)",
            (account_id, now - timedelta(days=40), now - timedelta(days=10), account_id, now, now + timedelta(days=30)),
        )
    assert registry.get_sample_value("atelier_dsr_open_requests", {"kind": "export"}) == 2
    assert registry.get_sample_value("atelier_dsr_overdue_requests", {"kind": "export"}) == 1
    assert registry.get_sample_value("atelier_dsr_open_requests", {"kind": "erasure"}) == 0
