"""Figures read from the database at scrape time: what is held, open or overdue right now, and the
totals of work done by processes that do not live to be scraped.

Counters of events a server sees (RPCs) live where the events happen; these figures describe the
database, so every control-plane replica reports the same database-wide values and dashboards and
alerts take their `max()`. Work done by CronJobs (training exports, retention sweeps) is counted
here too: a CronJob's process exits before Prometheus scrapes it, its rows stay.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from control_plane.clock import Clock
from control_plane.db.pool import Connection, Pool, read_for_scrape
from control_plane.sweeper import SweepReason

_DSR_KINDS = ("export", "erasure")


@dataclass(frozen=True)
class _DatabaseState:
    held_count: int
    oldest_held_at: datetime | None
    exported_rows: int
    dsr_rows: list[tuple[str, int, int]]
    """(kind, open, overdue) of the kinds with open requests."""
    swept: dict[str, int]
    """Items deleted by the retention sweeps, by `SweepReason` value (reasons never swept absent)."""


class DatabaseStateCollector(Collector):
    """Reservation, data-subject-request, export and sweep figures, read at scrape time."""

    def __init__(self, pool: Pool, clock: Clock) -> None:
        self._pool = pool
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self._clock.now()
        state = read_for_scrape(self._pool, lambda conn: _read_state(conn, now))
        if state is None:
            return
        held = GaugeMetricFamily(
            "atelier_credit_reservations_held", "Credit reservations held (neither committed, released nor expired)."
        )
        held.add_metric([], state.held_count)
        yield held
        oldest = GaugeMetricFamily(
            "atelier_credit_reservation_oldest_held_age_seconds",
            "Age of the oldest held credit reservation; 0 when none is held. A growing value means stuck holds.",
        )
        oldest.add_metric([], (now - state.oldest_held_at).total_seconds() if state.oldest_held_at is not None else 0.0)
        yield oldest
        # Exports run as CronJobs whose own counters die with them; the database keeps the total.
        exports = CounterMetricFamily("atelier_export_rows", "Rows written to completed training exports.")
        exports.add_metric([], state.exported_rows)
        yield exports
        # Sweeps too (`atelier sweep` in a CronJob, or the server's loop): every committed batch
        # added its count to `sweep_totals` in the same transaction, so this total is exact.
        swept = CounterMetricFamily(
            "atelier_sweep_deleted_items",
            "Items the retention sweeps deleted (rows with their blobs), reservations that expired and usage "
            "rows dropped, by reason; read from the database, so CronJob sweeps count too.",
            labels=["reason"],
        )
        for reason in SweepReason:
            swept.add_metric([reason.value], state.swept.get(reason.value, 0))
        yield swept
        by_kind = {kind: (open_count, overdue) for kind, open_count, overdue in state.dsr_rows}
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


def _read_state(conn: Connection, now: datetime) -> _DatabaseState:
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
    # A row per reason, kept by every committed sweep batch in its own transaction (0013), so the
    # total is exact and the scrape reads a handful of rows however many batches have run.
    swept: dict[str, int] = dict(conn.execute("SELECT reason, items FROM sweep_totals").fetchall())
    return _DatabaseState(held_count, oldest_held_at, exported_rows, dsr_rows, swept)
