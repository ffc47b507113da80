"""PostgreSQL restarts under load: callers see UNAVAILABLE, the pool reconnects, the ledger stays exact.

Scenario: a PostgreSQL server this test owns, the real control-plane gRPC server on it, and
client threads that grant credits and reserve-then-commit in a loop, each call with a short
deadline. Mid-load the database is stopped (fast shutdown, which ends every session), kept
down for a few seconds, and started again. Then:

- every call either succeeded or failed with UNAVAILABLE (never INTERNAL, never the
  client's own DEADLINE_EXCEEDED: the server answers within the caller's deadline);
- the server reconnects by itself: calls succeed again soon after the database is back;
- the ledger is exact: each grant and commit the client saw succeed is in it once, nothing
  is in it twice, every balance equals the sum of its ledger, `held` equals the held
  reservations, and the reservations left held by calls that failed mid-way expire at
  their TTL like any other.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import grpc
import pytest

from control_plane.api_keys import ensure_operator_key
from control_plane.clock import ManualClock
from control_plane.config import ControlPlaneConfig
from control_plane.credits import expire_reservations
from control_plane.db.migrations import apply_migrations
from control_plane.db.pool import Pool, open_pool
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.faults._support import control_plane_server, private_postgres
from tests.integration.control_plane._support import CLOCK_START, bearer

CLIENTS = 4
CALL_DEADLINE_S = 3.0
OUTAGE_S = 4.0
RESERVATION_TTL_S = 600
RECOVERY_WITHIN_S = 30.0
"""The pool retries connecting with backoff (1 s, 2 s, 4 s, ...): it is back well within this."""


@dataclass
class Outcome:
    """What one client thread saw."""

    codes: Counter[str] = field(default_factory=Counter)
    granted: list[str] = field(default_factory=list)
    """Reasons of the grants that answered OK."""
    committed: list[UUID] = field(default_factory=list)
    """Reservations whose commit answered OK."""
    slowest_failure_s: float = 0.0
    ok_after_restart: int = 0


def _client_loop(
    stub: ControlPlaneStub, secret: str, account_id: str, name: str, stop: threading.Event, restarted: threading.Event
) -> Outcome:
    outcome = Outcome()
    metadata = bearer(secret)

    def call(method: object, request: object) -> object | None:
        started = time.monotonic()
        try:
            response = method(request, metadata=metadata, timeout=CALL_DEADLINE_S)  # type: ignore[operator]
        except grpc.RpcError as error:
            outcome.codes[error.code().name] += 1  # type: ignore[attr-defined]
            outcome.slowest_failure_s = max(outcome.slowest_failure_s, time.monotonic() - started)
            return None
        outcome.codes["OK"] += 1
        if restarted.is_set():
            outcome.ok_after_restart += 1
        return response

    i = 0
    while not stop.is_set():
        i += 1
        if i % 4 == 0:
            reason = f"{name}-{i}"
            if call(stub.GrantCredits, pb.GrantCreditsRequest(account_id=account_id, amount=3, reason=reason)):
                outcome.granted.append(reason)
            continue
        reserved = call(
            stub.ReserveCredits,
            pb.ReserveCreditsRequest(account_id=account_id, amount=1, ttl_seconds=RESERVATION_TTL_S, purpose=name),
        )
        if reserved is None:
            continue
        reservation_id = reserved.reservation.reservation_id  # type: ignore[attr-defined]
        if call(stub.CommitReservation, pb.CommitReservationRequest(reservation_id=reservation_id)):
            outcome.committed.append(UUID(reservation_id))
    return outcome


@pytest.fixture
def database():  # type: ignore[no-untyped-def]
    """A PostgreSQL server this test may stop."""
    with private_postgres() as server:
        yield server


def test_postgres_restart_under_load_loses_and_doubles_no_ledger_row(database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = database.url()
    clock = ManualClock(CLOCK_START)
    config = ControlPlaneConfig(
        database_url=url,
        listen_address="127.0.0.1:0",
        metrics_port=0,
        home=tmp_path / "home",
        grpc_workers=16,
        # Abuse limits off: the clients hammer one key and account on purpose, to load the database.
        key_rate_per_s=0,
        account_rate_per_s=0,
        max_concurrent_generations=0,
    )
    # The server's own settings: the product's pool, default wait included.
    pool = open_pool(url, config.pool_min_size, config.pool_max_size)
    try:
        apply_migrations(pool)
        _, operator_secret = ensure_operator_key(pool, "faults", now=CLOCK_START)
        assert operator_secret is not None
        with control_plane_server(config, pool, clock) as address, grpc.insecure_channel(address) as channel:
            stub = ControlPlaneStub(channel)
            account_id = stub.CreateAccount(
                pb.CreateAccountRequest(birth_date="1990-05-17", initial_credits=1_000_000),
                metadata=bearer(operator_secret),
            ).account.account_id

            outcomes: list[Outcome] = []
            stop, restarted = threading.Event(), threading.Event()

            def run(n: int) -> None:
                outcomes.append(_client_loop(stub, operator_secret, account_id, f"c{n}", stop, restarted))

            threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(CLIENTS)]
            for thread in threads:
                thread.start()
            try:
                time.sleep(1.5)  # load before the outage
                assert database.stop(), "the database was not running: there was no outage to test"
                time.sleep(OUTAGE_S)
                database.start()
                restarted.set()
                recovered = _wait_for_successes(stub, operator_secret, account_id, RECOVERY_WITHIN_S)
                time.sleep(1.0)  # load after the recovery
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=CALL_DEADLINE_S * 4)
            assert recovered is not None, f"no call succeeded within {RECOVERY_WITHIN_S:.0f} s of the restart"
            codes = sum((o.codes for o in outcomes), Counter[str]())
            print(f"calls={dict(codes)} recovered_after_s={recovered:.2f}")
            assert len(outcomes) == CLIENTS
            _assert_answers(outcomes)
            _assert_ledger_exact(pool, UUID(account_id), outcomes, clock)
    finally:
        pool.close()


def _wait_for_successes(stub: ControlPlaneStub, secret: str, account_id: str, within_s: float) -> float | None:
    """Seconds until a call succeeds again; None when none did within `within_s`."""
    started = time.monotonic()
    while time.monotonic() < started + within_s:
        try:
            stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=bearer(secret), timeout=5)
            return time.monotonic() - started
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error  # type: ignore[attr-defined]
            time.sleep(0.2)
    return None


def _assert_answers(outcomes: list[Outcome]) -> None:
    codes = sum((o.codes for o in outcomes), Counter[str]())
    assert set(codes) <= {"OK", "UNAVAILABLE"}, f"calls answered {dict(codes)}"
    assert codes["UNAVAILABLE"] > 0, "no call noticed the outage: the test did not test anything"
    assert all(o.ok_after_restart > 0 for o in outcomes), "a client never succeeded after the restart"
    slowest = max(o.slowest_failure_s for o in outcomes)
    assert slowest < CALL_DEADLINE_S, f"a failing call took {slowest:.1f} s"


def _assert_ledger_exact(pool: Pool, account_id: UUID, outcomes: list[Outcome], clock: ManualClock) -> None:
    granted = [reason for o in outcomes for reason in o.granted]
    committed = {r for o in outcomes for r in o.committed}
    with pool.connection() as conn:
        grant_rows = Counter(
            row[0]
            for row in conn.execute(
                "SELECT reason FROM credit_ledger WHERE account_id = %s AND kind = 'grant'", (account_id,)
            )
        )
        charges = Counter(
            row[0]
            for row in conn.execute(
                "SELECT reservation_id FROM credit_ledger WHERE account_id = %s AND kind = 'charge'", (account_id,)
            )
        )
        committed_states = Counter(
            row[0]
            for row in conn.execute("SELECT state FROM reservations WHERE reservation_id = ANY(%s)", (list(committed),))
        )

    # Seen to succeed: in the ledger once. Failed ambiguously: in it at most once.
    assert all(grant_rows[reason] == 1 for reason in granted), "a grant the client saw succeed is missing"
    assert all(count == 1 for count in grant_rows.values()), "a grant was booked twice"
    assert all(charges[r] == 1 for r in committed), "a commit the client saw succeed is missing"
    assert all(count == 1 for count in charges.values())
    assert committed_states == Counter({"committed": len(committed)})

    _assert_balance_matches_ledger(pool, account_id)
    # Reservations whose commit (or whose reply) was lost stay held until their TTL, then expire.
    clock.advance(timedelta(seconds=RESERVATION_TTL_S + 1))
    with pool.connection() as conn:
        total_before = _balance(pool, account_id)[0]
        expire_reservations(conn, clock.now())
        assert conn.execute("SELECT count(*) FROM reservations WHERE state = 'held'").fetchone() == (0,)
    assert _balance(pool, account_id) == (total_before, 0)
    _assert_balance_matches_ledger(pool, account_id)


def _balance(pool: Pool, account_id: UUID) -> tuple[int, int]:
    with pool.connection() as conn:
        row = conn.execute("SELECT total, held FROM credit_balances WHERE account_id = %s", (account_id,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _assert_balance_matches_ledger(pool: Pool, account_id: UUID) -> None:
    with pool.connection() as conn:
        row = conn.execute(
            """
            SELECT b.total, b.held,
                   (SELECT coalesce(sum(delta), 0) FROM credit_ledger l WHERE l.account_id = b.account_id),
                   (SELECT coalesce(sum(amount), 0) FROM reservations r
                    WHERE r.account_id = b.account_id AND r.state = 'held')
            FROM credit_balances b WHERE b.account_id = %s
            """,
            (account_id,),
        ).fetchone()
    assert row is not None
    total, held, ledger_sum, held_sum = row
    assert total == ledger_sum, f"balance {total} but the ledger sums to {ledger_sum}"
    assert held == held_sum, f"{held} held but the held reservations sum to {held_sum}"
