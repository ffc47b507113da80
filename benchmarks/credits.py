"""How fast are credits, and can they be overspent? Reserve+commit pairs/s vs pgbench, same server, same run.

The baseline is `pgbench` running a one-row UPDATE with the same number of clients: every
reserve and every commit also serialises on one hot row (the account's balance), so that
is the ceiling the ledger can approach. Measured twice: the control plane's SQL called
directly (one connection per client), and the public gRPC API end to end (authentication,
audit rows and all), with the control-plane process's CPU per pair (the figure that stays
comparable on a busy machine). Then 64 callers race to reserve 1 credit each from a balance of 10.
Target (DESIGN.md §7): pairs/s >= 50% of pgbench TPS, zero overspend.

What the gRPC transport itself allows on this machine: the same clients sending pairs of empty
calls (two `grpc.health.v1.Health/Check`) to the same server, through the same interceptor, with
no database work at all. No ledger can beat that figure; `grpc_ratio_to_empty_pairs` says how
much of it the credit path keeps, and `empty_pairs_ratio_to_pgbench` is the most the target
ratio could be on this machine, with this gRPC stack.

    python benchmarks/credits.py                 # embedded PostgreSQL in a temp dir
    python benchmarks/credits.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python benchmarks/credits.py --seconds 1 --json   # tiny mode, as the tests run it
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psutil
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atelier.ports import free_port
from control_plane import credits
from control_plane.api_keys import ensure_operator_key
from control_plane.db import EmbeddedPostgres, apply_migrations, open_pool
from control_plane.db.embedded import postgres_bin_dir
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc

RACE_CALLERS = 64
RACE_BALANCE = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("ATELIER_DATABASE_URL"),
        help="a PostgreSQL server to create a scratch database on (default: embedded)",
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients in every measurement")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)

    with _server_url(args.database_url) as server_url, _scratch_database(server_url) as url:
        with open_pool(url, min_size=1, max_size=args.clients + 2) as pool:
            apply_migrations(pool)
            principal, secret = ensure_operator_key(pool, "bench")
        if secret is None:
            raise SystemExit("the scratch database already had an operator key")
        pgbench_tps = _pgbench_tps(url, args.clients, args.seconds)
        with _control_plane(url) as (address, server):
            stub = control_plane_pb2_grpc.ControlPlaneStub(grpc.insecure_channel(address))
            metadata = (("authorization", f"Bearer {secret}"),)
            account_id = _create_account(stub, metadata, credits=10**12)
            sql_pairs = _sql_pairs_per_s(url, principal, uuid.UUID(account_id), args.clients, args.seconds)
            cpu_before, started = _cpu_seconds(server), time.monotonic()
            grpc_pairs = _grpc_pairs_per_s(stub, metadata, account_id, args.clients, args.seconds)
            grpc_server_cpu_s = _cpu_seconds(server) - cpu_before
            grpc_pairs_done = grpc_pairs * (time.monotonic() - started)
            with grpc.insecure_channel(address) as channel:
                empty_pairs = _empty_pairs_per_s(channel, args.clients, args.seconds)
            race_account = _create_account(stub, metadata, credits=RACE_BALANCE)
            granted, balance = _race(stub, metadata, race_account)
    result = {
        "clients": args.clients,
        "pgbench_one_row_update_tps": pgbench_tps,
        "sql_reserve_commit_pairs_per_s": sql_pairs,
        "sql_ratio_to_pgbench": sql_pairs / pgbench_tps,
        "grpc_reserve_commit_pairs_per_s": grpc_pairs,
        "grpc_ratio_to_pgbench": grpc_pairs / pgbench_tps,
        # What a pair costs the control-plane process (user + system CPU), whatever else the
        # machine runs: the figure to compare across runs on a noisy machine.
        "grpc_server_cpu_ms_per_pair": grpc_server_cpu_s / max(grpc_pairs_done, 1) * 1000,
        "empty_grpc_pairs_per_s": empty_pairs,
        "empty_pairs_ratio_to_pgbench": empty_pairs / pgbench_tps,
        "grpc_ratio_to_empty_pairs": grpc_pairs / empty_pairs,
        "race_callers": RACE_CALLERS,
        "race_balance": RACE_BALANCE,
        "race_reservations_granted": granted,
        "race_balance_after": {"total": balance.total, "held": balance.held, "available": balance.available},
        "overspent": granted > RACE_BALANCE or balance.available < 0,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:34} {value:.3f}" if isinstance(value, float) else f"{key:34} {value}")
    return 1 if result["overspent"] else 0


@contextlib.contextmanager
def _server_url(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="atelier-bench-pg-") as directory:
        server = EmbeddedPostgres(Path(directory) / "postgres")
        try:
            yield server.start()
        finally:
            server.stop()


@contextlib.contextmanager
def _scratch_database(server_url: str) -> Iterator[str]:
    name = f"atelier_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield psycopg.conninfo.make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pgbench_tps(url: str, clients: int, seconds: float) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_hot_row (id int PRIMARY KEY, value bigint NOT NULL)")
        conn.execute("INSERT INTO bench_hot_row VALUES (1, 0)")
    pgbench = postgres_bin_dir() / "pgbench"
    if not pgbench.exists():
        pgbench = Path(shutil.which("pgbench") or "pgbench")
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write("UPDATE bench_hot_row SET value = value + 1 WHERE id = 1;\n")
        script.flush()
        output = subprocess.run(
            [
                str(pgbench),
                "-n",
                "-c",
                str(clients),
                "-j",
                str(clients),
                "-T",
                str(max(1, round(seconds))),
                "-f",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    match = re.search(r"tps = ([0-9.]+)", output)
    if match is None:
        raise RuntimeError(f"pgbench printed no tps:\n{output}")
    return float(match.group(1))


@contextlib.contextmanager
def _control_plane(url: str) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="atelier-bench-home-") as home:
        env = {
            **os.environ,
            "ATELIER_DATABASE_URL": url,
            "ATELIER_HOME": home,
            "ATELIER_CONTROL_PLANE_LISTEN": f"127.0.0.1:{port}",
            "ATELIER_CONTROL_PLANE_METRICS_PORT": "0",
            # Rate limits would cap what this measures; the bound on reservations in flight
            # stays on (so its cost is measured) but above the race's 64 callers.
            "ATELIER_KEY_RATE_PER_S": "0",
            "ATELIER_ACCOUNT_RATE_PER_S": "0",
            "ATELIER_MAX_CONCURRENT_GENERATIONS": str(RACE_CALLERS),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "control_plane", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            from control_plane.entrypoints.server import wait_until_serving

            wait_until_serving(f"127.0.0.1:{port}", timeout_s=60)
            yield f"127.0.0.1:{port}", psutil.Process(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _create_account(stub, metadata, credits: int) -> str:  # type: ignore[no-untyped-def]
    request = control_plane_pb2.CreateAccountRequest(birth_date="1990-01-01", initial_credits=credits)
    return str(stub.CreateAccount(request, metadata=metadata).account.account_id)


def _sql_pairs_per_s(url: str, principal, account_id: uuid.UUID, clients: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    actor = principal.actor()

    def client(deadline: float) -> int:
        pairs = 0
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                now = datetime.now(UTC)
                reservation, _ = credits.reserve_credits(
                    conn,
                    tenant_id=principal.tenant_id,
                    account_id=account_id,
                    amount=1,
                    ttl=timedelta(minutes=10),
                    purpose="bench",
                    actor=actor,
                    now=now,
                    concurrency=credits.ConcurrencyLimit(max_held=RACE_CALLERS, retry_after_s=1.0),
                )
                credits.commit_reservation(
                    conn,
                    tenant_id=principal.tenant_id,
                    reservation_id=reservation.reservation_id,
                    actor=actor,
                    now=now,
                )
                pairs += 1
        return pairs

    return _run_clients(client, clients, seconds)


def _grpc_pairs_per_s(stub, metadata, account_id: str, clients: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    def client(deadline: float) -> int:
        pairs = 0
        while time.monotonic() < deadline:
            reservation = stub.ReserveCredits(
                control_plane_pb2.ReserveCreditsRequest(account_id=account_id, amount=1), metadata=metadata
            ).reservation
            stub.CommitReservation(
                control_plane_pb2.CommitReservationRequest(reservation_id=reservation.reservation_id),
                metadata=metadata,
            )
            pairs += 1
        return pairs

    return _run_clients(client, clients, seconds)


def _empty_pairs_per_s(channel: grpc.Channel, clients: int, seconds: float) -> float:
    """Pairs of calls/s that do no work at all: the transport's ceiling for any pair of RPCs."""
    check = health_pb2_grpc.HealthStub(channel).Check
    request = health_pb2.HealthCheckRequest()

    def client(deadline: float) -> int:
        pairs = 0
        while time.monotonic() < deadline:
            check(request)
            check(request)
            pairs += 1
        return pairs

    return _run_clients(client, clients, seconds)


def _run_clients(client: Callable[[float], int], clients: int, seconds: float) -> float:
    started = time.monotonic()
    deadline = started + seconds
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(client, [deadline] * clients))
    return total / (time.monotonic() - started)


def _race(stub, metadata, account_id: str) -> tuple[int, control_plane_pb2.Balance]:  # type: ignore[no-untyped-def]
    start = threading.Barrier(RACE_CALLERS)

    def reserve(_: int) -> bool:
        start.wait()
        try:
            stub.ReserveCredits(
                control_plane_pb2.ReserveCreditsRequest(account_id=account_id, amount=1), metadata=metadata
            )
            return True
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            return False

    with ThreadPoolExecutor(RACE_CALLERS) as pool:
        granted = sum(pool.map(reserve, range(RACE_CALLERS)))
    balance = stub.GetBalance(control_plane_pb2.GetBalanceRequest(account_id=account_id), metadata=metadata).balance
    return granted, balance


if __name__ == "__main__":
    sys.exit(main())
