"""Gauges read from the database at scrape time: what is held, open or overdue right now.

Counters of events (RPCs, sweep deletions) live where the events happen; these gauges
describe state, so every control-plane replica reports the same database-wide values
and alerts take their `max()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from control_plane.clock import Clock
from control_plane.db.pool import Connection, Pool, read_for_scrape

_DSR_KINDS = ("export", "erasure")


class DatabaseStateCollector(Collector):
    """Reservation, data-subject-request and export figures, read at scrape time."""

    def __init__(self, pool: Pool, clock: Clock) -> None:
        self._pool = pool
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self._clock.now()
        figures = read_for_scrape(self._pool, lambda conn: _read_state(conn, now))
        if figures is None:
            return
        held_count, oldest_held_at, exported_rows, dsr_rows = figures
        held = GaugeMetricFamily(
            "atelier_credit_reservations_held", "Credit reservations held (neither committed, released nor expired)."
        )
        held.add_metric([], held_count)
        yield held
        oldest = GaugeMetricFamily(
            "atelier_credit_reservation_oldest_held_age_seconds",
            "Age of the oldest held credit reservation; 0 when none is held. A growing value means stuck holds.",
        )
        oldest.add_metric([], (now - oldest_held_at).total_seconds() if oldest_held_at is not None else 0.0)
        yield oldest
        # Exports run as CronJobs whose own counters die with them; the database keeps the total.
        exports = CounterMetricFamily("atelier_export_rows", "Rows written to completed training exports.")
        exports.add_metric([], exported_rows)
        yield exports
        by_kind = {kind: (open_count, overdue) for kind, open_count, overdue in dsr_rows}
        open_requests = GaugeMetricFamily(
            "atelier_dsr_open_requests", "Data-subject requests received and not yet completed.", labels=["kind"]
        )
        overdue_requests = GaugeMetricFamily(
            "atelier_dsr_overdue_requests", "Open data-subject requests past their due date.", labels=["kind"]
        )
        for kind in _DSR_KINDS:
            open_count, overdue = by_kind.get(kind, (0, 0))
            open_requests.add_metric([kind], open_count)
            overdue_requests.add_metric([kind], overdue)
        yield open_requests
        yield overdue_requests


def _read_state(conn: Connection, now: datetime) -> tuple[int, datetime | None, int, list[tuple[str, int, int]]]:
    held_count, oldest_held_at = conn.execute(
        "SELECT count(*), min(created_at) FROM reservations WHERE state = 'held'"
    ).fetchone() or (0, None)
    (exported_rows,) = conn.execute(
        "SELECT coalesce(sum(item_count), 0) FROM training_exports WHERE state = 'completed'"
    ).fetchone() or (0,)
    dsr_rows = conn.execute(
        """
        SELECT kind, count(*), count(*) FILTER (WHERE due_at < %s)
        FROM dsr_requests WHERE state IN ('received', 'in_progress')
        GROUP BY kind
        """,
        (now,),
    ).fetchall()
    return held_count, oldest_held_at, exported_rows, dsr_rows
