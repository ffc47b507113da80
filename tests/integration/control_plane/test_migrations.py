"""Schema migrations and the guarantees the schema itself enforces."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from control_plane.audit import SYSTEM, record_audit
from control_plane.db import migrations
from control_plane.db.migrations import apply_migrations, load_migrations, pending_migrations
from control_plane.db.pool import Pool, open_pool
from tests.integration._postgres import fresh_database


class TestApplyingMigrations:
    def test_applying_again_to_a_current_schema_applies_nothing(self, pool: Pool) -> None:
        assert apply_migrations(pool) == []
        with pool.connection() as conn:
            assert pending_migrations(conn) == []
            recorded = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert recorded == [m.version for m in load_migrations()]

    def test_a_fresh_database_gets_every_migration_in_order(self, postgres_url: str) -> None:
        with (
            fresh_database(postgres_url, prefix="atelier_migrate") as url,
            psycopg.connect(url, autocommit=True) as conn,
        ):
            assert pending_migrations(conn) == [m.version for m in load_migrations()]
            assert apply_migrations(conn) == [m.version for m in load_migrations()]
            assert apply_migrations(conn) == []

    def test_two_processes_migrating_at_once_apply_each_migration_once(self, postgres_url: str) -> None:
        with fresh_database(postgres_url, prefix="atelier_race") as url:
            pools = [open_pool(url, min_size=1, max_size=1) for _ in range(2)]
            start = threading.Barrier(2)
            results: list[list[str]] = []
            failures: list[BaseException] = []

            def migrate(pool: Pool) -> None:
                start.wait()
                try:
                    results.append(apply_migrations(pool))
                except BaseException as error:  # reported below; a thread cannot fail the test itself
                    failures.append(error)

            threads = [threading.Thread(target=migrate, args=(p,)) for p in pools]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            for pool in pools:
                pool.close()
        assert failures == []
        assert sorted(results, key=len) == [[], [m.version for m in load_migrations()]]

    def test_sweep_totals_start_from_the_batches_audited_before_them(
        self, postgres_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A database that swept before 0013 has only the batches' audit rows: the migration sums
        # them into sweep_totals, and every batch audited afterwards adds to that.
        before_totals = [m for m in load_migrations() if m.version < "0013"]
        at = datetime(2026, 1, 2, tzinfo=UTC)

        def audit_batch(conn: psycopg.Connection, reason: str, deleted: int) -> None:
            with conn.transaction():
                record_audit(
                    conn,
                    SYSTEM,
                    at,
                    "retention.sweep",
                    "sweep_batch",
                    uuid.uuid4(),
                    {"reason": reason, "deleted": deleted},
                )

        with (
            fresh_database(postgres_url, prefix="atelier_totals") as url,
            psycopg.connect(url, autocommit=True) as conn,
        ):
            with monkeypatch.context() as patch:
                patch.setattr(migrations, "load_migrations", lambda: before_totals)
                apply_migrations(conn)
            audit_batch(conn, "generated_retention", 5)
            audit_batch(conn, "generated_retention", 7)
            audit_batch(conn, "reservation_expired", 2)
            record_audit(conn, SYSTEM, at, "retention.sweep", "export", uuid.uuid4(), {"reason": "x", "deleted": 9})

            applied = apply_migrations(conn)
            audit_batch(conn, "generated_retention", 3)
            totals = {row[0]: row[1:] for row in conn.execute("SELECT reason, items, batches FROM sweep_totals")}

        assert "0013_sweep_totals" in applied
        assert totals == {"generated_retention": (15, 3), "reservation_expired": (2, 1)}

    def test_a_connection_inside_a_transaction_is_refused(self, pool: Pool) -> None:
        with pool.connection() as conn, conn.transaction(), pytest.raises(Exception, match="not in a transaction"):
            apply_migrations(conn)


class TestSchemaGuarantees:
    def _account(self, pool: Pool) -> uuid.UUID:
        with pool.connection() as conn, conn.transaction():
            tenant_id = conn.execute("INSERT INTO tenants (name) VALUES ('t') RETURNING tenant_id").fetchone()[0]
            account_id = conn.execute(
                "INSERT INTO accounts (tenant_id) VALUES (%s) RETURNING account_id", (tenant_id,)
            ).fetchone()[0]
            conn.execute("INSERT INTO credit_balances (account_id, total) VALUES (%s, 5)", (account_id,))
            conn.execute("INSERT INTO credit_ledger (account_id, delta, kind) VALUES (%s, 5, 'grant')", (account_id,))
            conn.execute(
                "INSERT INTO audit_log (action, target_type, target_id) VALUES ('x', 'account', %s)",
                (str(account_id),),
            )
        return account_id

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE credit_ledger SET delta = 500",
            "DELETE FROM credit_ledger",
            "UPDATE audit_log SET action = 'rewritten'",
            "DELETE FROM audit_log",
        ],
    )
    def test_ledger_and_audit_log_reject_updates_and_deletes(self, pool: Pool, statement: str) -> None:
        self._account(pool)
        with pool.connection() as conn:
            with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
                conn.execute(statement)
            assert conn.execute("SELECT count(*) FROM credit_ledger").fetchone() == (1,)
            assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == (1,)

    def test_consents_reject_updates(self, pool: Pool) -> None:
        account_id = self._account(pool)
        with pool.connection() as conn:
            conn.execute(
                "INSERT INTO consents (account_id, purpose, granted, method, source) "
                "VALUES (%s, 'training', true, 'checkbox', 'api')",
                (account_id,),
            )
            with pytest.raises(psycopg.errors.RestrictViolation):
                conn.execute("UPDATE consents SET granted = false")

    @pytest.mark.parametrize(
        "assignment",
        ["held = 6", "held = -1", "total = -1"],
        ids=["held over total", "negative held", "negative total"],
    )
    def test_balances_can_never_be_overspent(self, pool: Pool, assignment: str) -> None:
        account_id = self._account(pool)
        with pool.connection() as conn, pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(f"UPDATE credit_balances SET {assignment} WHERE account_id = %s", (account_id,))

    def test_a_reservation_can_be_charged_only_once(self, pool: Pool) -> None:
        account_id = self._account(pool)
        with pool.connection() as conn:
            reservation_id = conn.execute(
                "INSERT INTO reservations (account_id, amount, expires_at) VALUES (%s, 1, now() + interval '1 hour') "
                "RETURNING reservation_id",
                (account_id,),
            ).fetchone()[0]
            charge = "INSERT INTO credit_ledger (account_id, delta, kind, reservation_id) VALUES (%s, -1, 'charge', %s)"
            conn.execute(charge, (account_id, reservation_id))
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute(charge, (account_id, reservation_id))
