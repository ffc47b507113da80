"""The database stopped: the control plane says so in its health and fails every call at once.

The real gRPC server with its `DatabaseProbe`, on a PostgreSQL server the test owns and stops.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from control_plane.api_keys import ensure_operator_key
from control_plane.clock import ManualClock
from control_plane.config import ControlPlaneConfig
from control_plane.db.migrations import apply_migrations
from control_plane.db.pool import open_pool
from control_plane.db.probe import DatabaseProbe
from control_plane.entrypoints.server import SERVICE_NAME
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.e2e._status import reason_and_retry_delay
from tests.faults._support import control_plane_server, private_postgres, wait_for
from tests.integration.control_plane._support import CLOCK_START, bearer

PROBE_INTERVAL_S = 0.2
CALL_DEADLINE_S = 3.0
RECOVERY_WITHIN_S = 15.0
"""How soon after the database is back calls must succeed again (the pool reconnects with backoff)."""


@pytest.fixture
def database():  # type: ignore[no-untyped-def]
    with private_postgres() as server:
        yield server


def test_stopped_database_is_not_serving_and_calls_fail_at_once_with_database_unavailable(  # type: ignore[no-untyped-def]
    database, tmp_path: Path
) -> None:
    url = database.url()
    config = ControlPlaneConfig(database_url=url, listen_address="127.0.0.1:0", metrics_port=0, home=tmp_path)
    pool = open_pool(url, config.pool_min_size, config.pool_max_size)
    registry = CollectorRegistry()

    def reachable_gauge() -> float | None:
        return registry.get_sample_value("atelier_database_reachable")

    try:
        apply_migrations(pool)
        _, secret = ensure_operator_key(pool, "faults", now=CLOCK_START)
        assert secret is not None
        with (
            DatabaseProbe(url, interval_s=PROBE_INTERVAL_S, on_recovery=pool.check) as probe,
            control_plane_server(
                config, pool, ManualClock(CLOCK_START), database_probe=probe, registry=registry
            ) as address,
            grpc.insecure_channel(address) as channel,
        ):
            stub, health = ControlPlaneStub(channel), health_pb2_grpc.HealthStub(channel)

            def health_of(service: str) -> int:
                return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status

            def serving() -> bool:
                return health_of(SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING

            account_id = stub.CreateAccount(
                pb.CreateAccountRequest(birth_date="1990-05-17", initial_credits=5), metadata=bearer(secret)
            ).account.account_id
            assert serving()

            assert database.stop()
            assert wait_for(lambda: not serving(), within_s=5), "health still SERVING with the database stopped"
            assert health_of("") == health_pb2.HealthCheckResponse.NOT_SERVING
            scraped = time.monotonic()
            assert reachable_gauge() == 0.0  # and the scrape-time database reads do not hang the scrape
            assert time.monotonic() - scraped < 3.0
            assert registry.get_sample_value("atelier_credit_reservations_held") is None

            for timeout in (CALL_DEADLINE_S, None):  # with the caller's deadline, and with none at all
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as raised:
                    stub.GetBalance(
                        pb.GetBalanceRequest(account_id=account_id), metadata=bearer(secret), timeout=timeout
                    )
                elapsed = time.monotonic() - started
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
                assert reason_and_retry_delay(raised.value) == ("DATABASE_UNAVAILABLE", 1.0)
                assert elapsed < 1.0, f"the refusal took {elapsed:.2f} s"

            database.start()
            assert wait_for(serving, within_s=5), "health did not come back once the database did"
            # The pool replaces the connections the outage broke; until it has one, a call is still
            # refused as DATABASE_UNAVAILABLE (at once, with RetryInfo), never anything else.
            recovered_by = time.monotonic() + RECOVERY_WITHIN_S
            while True:
                try:
                    balance = stub.GetBalance(
                        pb.GetBalanceRequest(account_id=account_id), metadata=bearer(secret), timeout=CALL_DEADLINE_S
                    ).balance
                    break
                except grpc.RpcError as refused:
                    assert reason_and_retry_delay(refused) == ("DATABASE_UNAVAILABLE", 1.0), refused
                    assert time.monotonic() < recovered_by, "calls did not succeed again after the database came back"
                    time.sleep(0.2)
            assert balance.available == 5
            assert reachable_gauge() == 1.0
    finally:
        pool.close()
