"""What the fault tests share: a PostgreSQL server a test may stop, and an in-process control plane."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from prometheus_client import CollectorRegistry

from control_plane.blobstore import LocalBlobStore
from control_plane.bootstrap import ControlPlaneDeps, load_policies
from control_plane.clock import Clock
from control_plane.config import ControlPlaneConfig
from control_plane.crypto import ensure_master_key_file
from control_plane.db.embedded import EmbeddedPostgres
from control_plane.db.pool import Pool
from control_plane.keystore import PostgresKeyStore
from control_plane.server import add_listen_port, build_server


@contextmanager
def private_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of the test's own (pgserver's binaries), so stopping it disturbs no
    other test; stopped and deleted afterwards.

    Its data lives in a fresh directory under the system temp dir, not under pytest's
    `tmp_path`: as root, the server runs as pgserver's system user, which must traverse every
    parent, and each pytest session resets its base directory to mode 0700.
    """
    root = Path(tempfile.mkdtemp(prefix="atelier-faults-pg-"))
    server = EmbeddedPostgres(root / "postgres", database="postgres")
    url = server.start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # A throwaway server: durability costs time here and proves nothing.
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def control_plane_server(config: ControlPlaneConfig, pool: Pool, clock: Clock) -> Iterator[str]:
    """The real gRPC server, built as `serve` builds it, on `pool`; yields its host:port."""
    deps = ControlPlaneDeps(
        pool=pool,
        blobs=LocalBlobStore(config.blob_root),
        clock=clock,
        keys=PostgresKeyStore(ensure_master_key_file(config.home / "master.key")),
        policies=load_policies(config),
        registry=CollectorRegistry(),
    )
    server = build_server(config, deps)
    port = add_listen_port(server, config.listen_address)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()
