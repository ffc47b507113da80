"""Fixtures for control-plane integration tests: real PostgreSQL, real gRPC, no mocks.

Started once per session: a database with the migrations applied, a pool, a blob store, and
a gRPC server on a free port whose clock the tests move. Before every test the data tables
are truncated and the clock is reset, so tests never see each other's rows.

The blob store is the local directory unless a test runs with `blob_backend` "s3": modules
marked `blob_stores` run every test (but those marked `local_blob_store_only`) against both,
the S3 one a bucket of a SeaweedFS server started once per session (on first use).
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from atelier.state import ClusterState, save_operator_key
from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.adapters.s3_blobstore import S3BlobStore
from control_plane.api_keys import ensure_operator_key
from control_plane.bootstrap import ControlPlaneDeps
from control_plane.clock import ManualClock
from control_plane.config import ControlPlaneConfig
from control_plane.crypto import ensure_master_key_file
from control_plane.db.migrations import apply_migrations
from control_plane.db.pool import Pool, open_pool
from control_plane.entrypoints.server import add_listen_port, build_server
from control_plane.policy import PolicyRegistry
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc
from tests.integration._postgres import fresh_database, postgres_server
from tests.integration._seaweedfs import SeaweedS3, seaweedfs_server
from tests.integration.control_plane._support import CLOCK_START, Caller, StoredBlobs, SwitchedBlobStore

TEST_BUCKET = "atelier-tests"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Runs the tests of modules marked `blob_stores` once per blob store."""
    if metafunc.definition.get_closest_marker("blob_stores") is None:
        return
    if metafunc.definition.get_closest_marker("local_blob_store_only") is not None:
        return
    metafunc.parametrize("blob_backend", ["local", "s3"], indirect=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of the PostgreSQL server (embedded unless ATELIER_TEST_DATABASE_URL is set)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def database_url(postgres_url: str) -> Iterator[str]:
    """A database of its own for this test session, migrated."""
    with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="session")
def pool(database_url: str) -> Iterator[Pool]:
    """The session's pool, on a migrated schema; big enough for the concurrency tests."""
    pool = open_pool(database_url, min_size=2, max_size=40)
    apply_migrations(pool)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def data_tables(pool: Pool) -> list[str]:
    """Every table but schema_migrations."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        ).fetchall()
    return sorted(row[0] for row in rows)


@pytest.fixture(scope="session")
def clock() -> ManualClock:
    """The clock of the session's server; reset to CLOCK_START before each test."""
    return ManualClock(CLOCK_START)


@pytest.fixture(autouse=True)
def clean_state(
    pool: Pool, data_tables: list[str], clock: ManualClock, blob_dir: Path, blobs: SwitchedBlobStore, blob_backend: str
) -> None:
    """Empties every data table and the blob store in use, and resets the clock, before each test.

    TRUNCATE, not DELETE: the append-only triggers on the ledger, consents and audit log
    block DELETE (by design) but not TRUNCATE.
    """
    with pool.connection() as conn:
        conn.execute(f"TRUNCATE {', '.join(data_tables)} RESTART IDENTITY CASCADE")
    for child in blob_dir.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    if isinstance(blobs.current, S3BlobStore):
        blobs.current.delete_many(list(blobs.current.list_keys()))
    clock.set(CLOCK_START)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 server with the bucket `atelier-tests`, started on first use."""
    with seaweedfs_server() as server:
        server.create_bucket(TEST_BUCKET)
        yield server


@pytest.fixture(scope="session")
def s3_blobs(s3_server: SeaweedS3) -> S3BlobStore:
    """An S3 blob store under a prefix of this session's own."""
    return S3BlobStore(f"s3://{TEST_BUCKET}/session-{secrets.token_hex(4)}", s3_server.overrides)


@pytest.fixture
def blob_backend(request: pytest.FixtureRequest, blobs: SwitchedBlobStore) -> Iterator[str]:
    """ "local" (the default) or "s3": which store the session's server and `blobs` use in this test."""
    name = getattr(request, "param", "local")
    blobs.use(request.getfixturevalue("s3_blobs") if name == "s3" else blobs.local)
    yield name
    blobs.use(blobs.local)


@pytest.fixture
def stored_blobs(blobs: SwitchedBlobStore) -> StoredBlobs:
    """Lists the store in use: every blob's key and raw (sealed) bytes."""
    return blobs.raw_blobs


@pytest.fixture(scope="session")
def blob_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the session's blob store."""
    return tmp_path_factory.mktemp("blobs")


@pytest.fixture(scope="session")
def blobs(blob_dir: Path) -> SwitchedBlobStore:
    """The session's blob store: the local directory, or the S3 bucket in tests run with `blob_backend` "s3"."""
    return SwitchedBlobStore(LocalBlobStore(blob_dir))


@pytest.fixture(scope="session")
def config(database_url: str, blob_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ControlPlaneConfig:
    """Configuration of the session's server."""
    return ControlPlaneConfig(
        database_url=database_url,
        listen_address="127.0.0.1:0",
        metrics_port=0,
        home=tmp_path_factory.mktemp("home"),
        blob_dir=blob_dir,
        grpc_workers=32,
        # Abuse limits off: tests race many calls of one key and account on purpose.
        # test_abuse_limits.py starts its own server with tight limits.
        key_rate_per_s=0,
        account_rate_per_s=0,
        max_concurrent_generations=0,
    )


@pytest.fixture(scope="session")
def master_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session server's master key file (0600), as the launcher creates it."""
    path = tmp_path_factory.mktemp("keys") / "master.key"
    ensure_master_key_file(path)
    return path


@pytest.fixture(scope="session")
def keys(master_key_file: Path) -> PostgresKeyStore:
    """The session server's key store (rotations in tests move its master key)."""
    from control_plane.crypto import read_master_key_file

    return PostgresKeyStore(read_master_key_file(master_key_file), master_key_file)


@pytest.fixture(scope="session")
def policies(config: ControlPlaneConfig) -> PolicyRegistry:
    """The shipped policy profiles (deploy/policies), product defaults as the default."""
    from control_plane.bootstrap import load_policies

    return load_policies(config)


@pytest.fixture(scope="session")
def metrics_registry() -> CollectorRegistry:
    """Where the session's server records its metrics."""
    return CollectorRegistry()


@pytest.fixture(scope="session")
def server_address(
    config: ControlPlaneConfig,
    pool: Pool,
    blobs: SwitchedBlobStore,
    clock: ManualClock,
    metrics_registry: CollectorRegistry,
    keys: PostgresKeyStore,
    policies: PolicyRegistry,
) -> Iterator[str]:
    """host:port of a running control-plane server (the real one, built as `serve` builds it)."""
    deps = ControlPlaneDeps(
        pool=pool, blobs=blobs, clock=clock, keys=keys, policies=policies, registry=metrics_registry
    )
    server = build_server(config, deps)
    port = add_listen_port(server, config.listen_address)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture(scope="session")
def channel(server_address: str) -> Iterator[grpc.Channel]:
    """A channel to the session's server."""
    with grpc.insecure_channel(server_address) as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> control_plane_pb2_grpc.ControlPlaneStub:
    """ControlPlane client."""
    return control_plane_pb2_grpc.ControlPlaneStub(channel)


@pytest.fixture
def operator(pool: Pool) -> Caller:
    """An admin key of the tenant "test", as the launcher creates it."""
    principal, secret = ensure_operator_key(pool, "test", now=CLOCK_START)
    if secret is None:
        raise RuntimeError("the tables were truncated, so the operator key must be new")
    return Caller(principal, secret)


@pytest.fixture
def make_key(stub: control_plane_pb2_grpc.ControlPlaneStub, operator: Caller) -> Callable[..., str]:
    """Creates a key of the operator's tenant with the given scopes; returns its secret."""

    def make(*scopes: int, name: str = "test key") -> str:
        response = stub.CreateApiKey(
            control_plane_pb2.CreateApiKeyRequest(name=name, scopes=list(scopes)), metadata=operator.metadata
        )
        return response.secret

    return make


@pytest.fixture
def make_account(stub: control_plane_pb2_grpc.ControlPlaneStub, operator: Caller) -> Callable[..., str]:
    """Creates an adult account of the operator's tenant; returns its id."""

    def make(credits: int = 0, metadata: tuple[tuple[str, str], ...] | None = None, **fields: object) -> str:
        request = control_plane_pb2.CreateAccountRequest(birth_date="1990-05-17", initial_credits=credits, **fields)
        response = stub.CreateAccount(request, metadata=metadata or operator.metadata)
        return response.account.account_id

    return make


@pytest.fixture
def cli_env(  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url, blob_dir, master_key_file, server_address, operator
) -> Path:
    """ATELIER_* settings of the session's control plane, and a home whose state names its server."""
    home = tmp_path / "home"
    home.mkdir()
    for name, value in {
        "ATELIER_HOME": str(home),
        "ATELIER_DATABASE_URL": database_url,
        "ATELIER_BLOB_DIR": str(blob_dir),
        "ATELIER_MASTER_KEY_FILE": str(master_key_file),
    }.items():
        monkeypatch.setenv(name, value)
    ClusterState(
        control_plane_address=server_address,
        serve_grpc_address="127.0.0.1:1",
        control_plane_metrics_url="",
        ray_address="",
        ray_dashboard_url="",
        ray_metrics_url="",
        embedded_database=False,
    ).save(home)
    save_operator_key(home, operator.secret)
    return home
