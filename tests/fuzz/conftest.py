"""Fixtures of the fuzzers: the integration tests' real server on real PostgreSQL, and a world.

The server, pool and clock are the control-plane integration fixtures (imported, so this
package starts its own server and database once per session); every test starts from empty
tables (their autouse `clean_state`) and builds `world`, two tenants with data of every kind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.clock import ManualClock
from control_plane.db.pool import Pool
from control_plane.policy import PolicyRegistry
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from protos.atelier.v1.training_pb2_grpc import TrainingDataStub
from tests.fuzz._oracle import CASES, OBSERVED, Fingerprints
from tests.fuzz._world import World, build_world
from tests.integration.control_plane import conftest as _integration

# The integration tests' fixtures, bound here so pytest finds them for this package too.
blob_backend = _integration.blob_backend
blob_dir = _integration.blob_dir
blobs = _integration.blobs
channel = _integration.channel
clean_state = _integration.clean_state
clock = _integration.clock
config = _integration.config
data_tables = _integration.data_tables
database_url = _integration.database_url
keys = _integration.keys
master_key_file = _integration.master_key_file
metrics_registry = _integration.metrics_registry
policies = _integration.policies
pool = _integration.pool
postgres_url = _integration.postgres_url
server_address = _integration.server_address
stub = _integration.stub


@pytest.fixture
def world(
    pool: Pool,
    stub: ControlPlaneStub,
    channel,  # type: ignore[no-untyped-def]
    blobs: LocalBlobStore,
    keys: PostgresKeyStore,
    policies: PolicyRegistry,
    clock: ManualClock,
    tmp_path: Path,
) -> World:
    """Two tenants with accounts, keys, content, reservations, requests and an export."""
    return build_world(pool, stub, TrainingDataStub(channel), blobs, keys, policies, clock, tmp_path)


@pytest.fixture(scope="session")
def fingerprints(pool: Pool, data_tables: list[str]) -> Fingerprints:
    """Hashes of every data table, and of each tenant's rows."""
    return Fingerprints(pool, data_tables)


_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.fuzz)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Reports how many fuzz cases ran, per service and kind (the issue asks for the count)."""
    if not CASES:
        return
    terminalreporter.section("fuzz cases")
    for (service, kind), count in sorted(CASES.items()):
        terminalreporter.write_line(f"{service:<14} {kind:<10} {count:>7}")
    terminalreporter.write_line(f"{'total':<25} {sum(CASES.values()):>7}")
    if OBSERVED:
        terminalreporter.section("answers to another tenant's ids")
        for name, codes in sorted(OBSERVED.items()):
            terminalreporter.write_line(f"{name:<40} {', '.join(sorted(codes))}")
