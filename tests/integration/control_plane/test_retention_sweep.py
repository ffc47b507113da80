"""The retention sweeper: each rule deletes rows and blobs exactly when its policy says, once."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from datetime import timedelta
from uuid import UUID

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from control_plane.clock import ManualClock
from control_plane.config import ConfigError
from control_plane.db.pool import Pool
from control_plane.metrics import DatabaseStateCollector
from control_plane.policy import PolicyRegistry
from control_plane.sweeper import SweepLagCollector, SweepMetrics, SweepReason, run_sweep
from protos.atelier.v1 import control_plane_pb2 as pb
from tests.integration.control_plane._privacy import use_profile
from tests.integration.control_plane._support import REPO_ROOT
from tests.integration.control_plane._training import (
    audited_sweep_count,
    audited_sweeps_by_reason,
    iter_ids,
    live_ids,
    store,
    sweep,
    sweep_totals,
)

pytestmark = pytest.mark.blob_stores

DAY = timedelta(days=1)


def _blob_keys(pool: Pool) -> dict[UUID, str]:
    with pool.connection() as conn:
        return dict(conn.execute("SELECT content_id, blob_key FROM content").fetchall())  # type: ignore[arg-type]


class TestGeneratedContentRetention:
    def test_free_tier_images_go_30_days_after_creation_with_their_blobs(  # type: ignore[no-untyped-def]
        self, pool, blobs, policies, clock, stub, operator, make_account
    ) -> None:
        free = make_account(credits=10)
        premium = make_account(credits=10, tier=pb.TIER_PREMIUM)
        doomed = set(iter_ids(store(stub, operator, free, 3)))
        kept = set(iter_ids(store(stub, operator, premium, 2, seed=10)))
        keys = _blob_keys(pool)
        start = clock.now()

        early = sweep(pool, blobs, policies, start + 30 * DAY - timedelta(seconds=1))
        assert early.deleted[SweepReason.GENERATED_RETENTION] == 0
        report = sweep(pool, blobs, policies, start + 30 * DAY)

        assert report.deleted[SweepReason.GENERATED_RETENTION] == 3
        assert live_ids(pool) == kept
        assert not any(blobs.exists(keys[c]) for c in doomed)
        assert all(blobs.exists(keys[c]) for c in kept)
        assert audited_sweep_count(pool) == 3

    def test_legal_hold_and_keep_flag_exempt_an_account(  # type: ignore[no-untyped-def]
        self, pool, blobs, policies, clock, stub, operator, make_account
    ) -> None:
        held, kept = make_account(credits=5), make_account(credits=5)
        store(stub, operator, held, 1)
        store(stub, operator, kept, 1, seed=5)
        with pool.connection() as conn:
            conn.execute("UPDATE accounts SET legal_hold = true WHERE account_id = %s", (held,))
            conn.execute("UPDATE accounts SET keep = true WHERE account_id = %s", (kept,))
        report = sweep(pool, blobs, policies, clock.now() + 400 * DAY)
        assert report.total == 0
        assert len(live_ids(pool)) == 2


class TestInactivityPurge:
    def test_inactive_accounts_lose_generated_images_after_90_days_unless_premium(  # type: ignore[no-untyped-def]
        self, pool, blobs, policies, clock, stub, operator, make_account
    ) -> None:
        # credits-moderated (seed 004) turns the 30-day rule off and keeps the 90-day rule.
        use_profile(pool, policies, operator, "credits-moderated", clock.now())
        idle, premium, active = (
            make_account(credits=5),
            make_account(credits=5, tier=pb.TIER_PREMIUM),
            make_account(credits=5),
        )
        idle_items = set(iter_ids(store(stub, operator, idle, 2)))
        premium_items = set(iter_ids(store(stub, operator, premium, 1, seed=3)))
        active_items = set(iter_ids(store(stub, operator, active, 1, seed=4)))
        start = clock.now()
        clock.advance(60 * DAY)
        active_items |= set(iter_ids(store(stub, operator, active, 1, seed=5)))  # activity at day 60

        assert sweep(pool, blobs, policies, start + 90 * DAY - timedelta(seconds=1)).total == 0
        report = sweep(pool, blobs, policies, start + 90 * DAY)

        assert report.deleted[SweepReason.INACTIVITY] == len(idle_items)
        assert live_ids(pool) == premium_items | active_items
        later = sweep(pool, blobs, policies, start + 150 * DAY)
        assert later.deleted[SweepReason.INACTIVITY] == 2
        assert live_ids(pool) == premium_items


class TestUploadsAndSoftDeletes:
    def test_uploads_for_editing_go_after_24_hours(  # type: ignore[no-untyped-def]
        self, pool, blobs, policies, clock, stub, operator, make_account
    ) -> None:
        account = make_account(credits=5, tier=pb.TIER_PREMIUM)
        upload = store(stub, operator, account, 1, kind=pb.CONTENT_KIND_UPLOAD)[0]
        generated = store(stub, operator, account, 1, seed=9)[0]
        start = clock.now()
        assert sweep(pool, blobs, policies, start + timedelta(hours=23, minutes=59)).total == 0
        report = sweep(pool, blobs, policies, start + timedelta(hours=24))
        assert report.deleted[SweepReason.UPLOAD_LIFETIME] == 1
        assert live_ids(pool) == {UUID(generated.content_id)}
        assert UUID(upload.content_id) not in live_ids(pool)

    def test_soft_deleted_items_are_purged_30_days_after_the_delete(  # type: ignore[no-untyped-def]
        self, pool, blobs, policies, clock, stub, operator, make_account
    ) -> None:
        account = make_account(credits=5, tier=pb.TIER_PREMIUM)
        item = store(stub, operator, account, 1)[0]
        deleted_at = clock.now() + 5 * DAY
        with pool.connection() as conn:
            conn.execute("UPDATE content SET deleted_at = %s WHERE content_id = %s", (deleted_at, item.content_id))
        keys = _blob_keys(pool)
        assert sweep(pool, blobs, policies, deleted_at + 30 * DAY - timedelta(seconds=1)).total == 0
        report = sweep(pool, blobs, policies, deleted_at + 30 * DAY)
        assert report.deleted[SweepReason.DELETED_PURGE] == 1
        assert live_ids(pool) == set()
        assert not blobs.exists(keys[UUID(item.content_id)])


class TestReservationsAndUsage:
    def test_expired_reservations_are_released_by_the_sweep(  # type: ignore[no-untyped-def]
        self, pool, blobs, policies, clock, stub, operator, make_account
    ) -> None:
        account = make_account(credits=5)
        stub.ReserveCredits(pb.ReserveCreditsRequest(account_id=account, amount=3), metadata=operator.metadata)
        report = sweep(pool, blobs, policies, clock.now() + timedelta(hours=2))
        assert report.deleted[SweepReason.RESERVATION_EXPIRED] == 1
        balance = stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=operator.metadata).balance
        assert balance.held == 0

    def test_usage_is_aggregated_once_per_finished_day_and_kept_730_days(  # type: ignore[no-untyped-def]
        self, pool, blobs, policies, clock, stub, operator, make_account
    ) -> None:
        account = make_account(credits=20, tier=pb.TIER_PREMIUM)
        store(stub, operator, account, 2)
        store(stub, operator, account, 3, seed=5)
        first = sweep(pool, blobs, policies, clock.now() + DAY)
        again = sweep(pool, blobs, policies, clock.now() + 2 * DAY)
        assert (first.usage_days_aggregated, again.usage_days_aggregated) == (1, 0)
        with pool.connection() as conn:
            rows = conn.execute("SELECT day, model, generations, images, credits_charged FROM usage_daily").fetchall()
        assert rows == [(clock.now().date(), "tiny-sd", 2, 5, 2)]
        assert sweep(pool, blobs, policies, clock.now() + 730 * DAY).deleted[SweepReason.USAGE_RETENTION] == 0
        report = sweep(pool, blobs, policies, clock.now() + 732 * DAY)
        assert report.deleted[SweepReason.USAGE_RETENTION] == 1


class TestConcurrencyAndMetrics:
    def test_sweepers_side_by_side_delete_each_item_once_and_count_it_once(  # type: ignore[no-untyped-def]
        self, pool, blobs, policies, clock, stub, operator, make_account
    ) -> None:
        accounts = [make_account(credits=100) for _ in range(4)]
        for index, account in enumerate(accounts):
            store(stub, operator, account, 48, seed=100 * index)
        holder = make_account(credits=20)
        for _ in range(20):
            stub.ReserveCredits(pb.ReserveCreditsRequest(account_id=holder, amount=1), metadata=operator.metadata)
        now = clock.now() + 31 * DAY
        reports = []
        barrier = threading.Barrier(4)

        def run() -> None:
            barrier.wait()
            reports.append(run_sweep(pool, blobs, policies, now=now, batch_size=7))

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)

        assert sum(r.deleted[SweepReason.GENERATED_RETENTION] for r in reports) == 192
        assert sum(r.deleted[SweepReason.RESERVATION_EXPIRED] for r in reports) == 20
        assert live_ids(pool) == set()
        assert audited_sweep_count(pool) == 212
        # Every batch added to its reason's total in its own transaction while others did the same:
        # the totals /metrics reads are exactly the audited batches, none lost or counted twice.
        audited = audited_sweeps_by_reason(pool)
        assert audited[SweepReason.GENERATED_RETENTION][1] >= 192 // 7
        assert sweep_totals(pool) == audited

    def test_deletions_are_counted_by_reason_and_lag_falls_to_zero(  # type: ignore[no-untyped-def]
        self, pool, blobs, policies, clock, stub, operator, make_account
    ) -> None:
        registry = CollectorRegistry()
        metrics = SweepMetrics(registry)
        lag_clock = ManualClock(clock.now())
        registry.register(SweepLagCollector(pool, policies, lag_clock))
        account = make_account(credits=5)
        store(stub, operator, account, 2)
        assert registry.get_sample_value("atelier_sweep_lag_seconds") == 0
        lag_clock.advance(32 * DAY)
        assert registry.get_sample_value("atelier_sweep_lag_seconds") == (2 * DAY).total_seconds()

        run_sweep(pool, blobs, policies, now=lag_clock.now(), metrics=metrics)

        assert registry.get_sample_value("atelier_sweep_deleted_items_total", {"reason": "generated_retention"}) == 2
        assert registry.get_sample_value("atelier_sweep_lag_seconds") == 0

    def test_the_control_plane_reads_every_sweeps_deletions_from_the_database(  # type: ignore[no-untyped-def]
        self, pool, blobs, policies, clock, stub, operator, make_account
    ) -> None:
        # The server's registry: a sweep that counts nowhere (a CronJob's process, gone before any
        # scrape) still shows, since the collector reads the totals its batches kept in the database.
        registry = CollectorRegistry()
        registry.register(DatabaseStateCollector(pool, clock))
        account = make_account(credits=5)
        store(stub, operator, account, 2)
        stub.ReserveCredits(pb.ReserveCreditsRequest(account_id=account, amount=1), metadata=operator.metadata)
        assert {
            reason.value: registry.get_sample_value("atelier_sweep_deleted_items_total", {"reason": reason.value})
            for reason in SweepReason
        } == {reason.value: 0 for reason in SweepReason}

        run_sweep(pool, blobs, policies, now=clock.now() + 32 * DAY, metrics=None)

        def swept(reason: SweepReason) -> float | None:
            return registry.get_sample_value("atelier_sweep_deleted_items_total", {"reason": reason.value})

        assert swept(SweepReason.GENERATED_RETENTION) == 2
        assert swept(SweepReason.RESERVATION_EXPIRED) == 1
        assert swept(SweepReason.INACTIVITY) == 0
        # As Prometheus reads it.
        assert (
            'atelier_sweep_deleted_items_total{reason="generated_retention"} 2.0' in generate_latest(registry).decode()
        )


def test_a_tenant_on_an_unknown_profile_stops_sweeps_and_start_up_instead_of_getting_the_defaults(  # type: ignore[no-untyped-def]
    pool, blobs, policies: PolicyRegistry, clock, stub, operator, make_account
) -> None:
    # A profile file removed while tenants still name it: the defaults' 30-day rule must not
    # quietly apply to them (nor any other rule they did not choose).
    account = make_account(credits=5)
    stored = set(iter_ids(store(stub, operator, account, 1)))
    with pool.connection() as conn:
        conn.execute("UPDATE tenants SET policy_profile = 'retired-profile'")
    with pytest.raises(ConfigError, match="'retired-profile' is not a loaded profile"):
        sweep(pool, blobs, policies, clock.now() + 30 * DAY)
    assert live_ids(pool) == stored
    with pool.connection() as conn, pytest.raises(ConfigError, match=r"'retired-profile' \(tenants "):
        policies.check_tenants(conn)


class TestCrashResume:
    # The killed sweeper is a child process on the local directory (it pauses inside an unlink).
    @pytest.mark.local_blob_store_only
    def test_a_sweeper_killed_mid_batch_loses_nothing_and_deletes_nothing_twice(  # type: ignore[no-untyped-def]
        self, pool, blobs, policies, clock, stub, operator, make_account, database_url, blob_dir
    ) -> None:
        free, premium = make_account(credits=100), make_account(credits=100, tier=pb.TIER_PREMIUM)
        expired = set(iter_ids(store(stub, operator, free, 60)))
        kept = set(iter_ids(store(stub, operator, premium, 5, seed=500)))
        keys = _blob_keys(pool)
        as_of = clock.now() + 31 * DAY
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.control_plane._sweep_child",
                database_url,
                str(blob_dir),
                as_of.isoformat(),
                "10",
                "25",
            ],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            lines = []
            assert child.stdout is not None
            for line in child.stdout:
                lines.append(line.strip())
                if line.strip() == "paused":
                    break
            assert lines == ["batch generated_retention 10", "batch generated_retention 10", "paused"]
            unlinked_in_open_batch = {c for c in expired if c in live_ids(pool) and not blobs.exists(keys[c])}
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=60)

        # The killed batch rolled back: its rows are all back, four of them without blobs.
        assert len(unlinked_in_open_batch) == 4
        assert len(live_ids(pool) & expired) == 40
        assert audited_sweep_count(pool) == 20
        assert sweep_totals(pool) == {SweepReason.GENERATED_RETENTION: (20, 2)}

        report = sweep(pool, blobs, policies, as_of, batch_size=10)

        assert report.deleted[SweepReason.GENERATED_RETENTION] == 40
        assert live_ids(pool) == kept
        assert not any(blobs.exists(keys[c]) for c in expired)
        assert all(blobs.exists(keys[c]) for c in kept)
        assert audited_sweep_count(pool) == 60
        assert sweep_totals(pool) == audited_sweeps_by_reason(pool)
        assert sweep_totals(pool)[SweepReason.GENERATED_RETENTION][0] == 60
