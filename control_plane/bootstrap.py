"""Wires the control plane's adapters (database pool, blob store, clock, metrics) from config."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType

from prometheus_client import CollectorRegistry

from control_plane.blobstore import BlobStore, LocalBlobStore
from control_plane.clock import Clock, SystemClock
from control_plane.config import ControlPlaneConfig
from control_plane.db.embedded import EmbeddedPostgres
from control_plane.db.migrations import apply_migrations
from control_plane.db.pool import Pool, open_pool


@dataclass
class ControlPlaneDeps:
    """What the servicer and the jobs run on. Closing it closes the pool."""

    pool: Pool
    blobs: BlobStore
    clock: Clock
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    """Where metrics register; the server process passes prometheus_client's default."""

    applied_migrations: list[str] = field(default_factory=list)
    """Versions `bootstrap` applied at start-up (empty when the schema was current)."""

    def close(self) -> None:
        """Closes the pool (waiting for borrowed connections to come back)."""
        self.pool.close()

    def __enter__(self) -> ControlPlaneDeps:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def resolve_database_url(config: ControlPlaneConfig) -> str:
    """`config.database_url`, or the URL of the embedded server (started if not running)."""
    if config.database_url is not None:
        return config.database_url
    return EmbeddedPostgres(config.embedded_data_dir).start()


def bootstrap(
    config: ControlPlaneConfig,
    *,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    migrate: bool = True,
) -> ControlPlaneDeps:
    """Opens the pool, applies migrations and opens the blob store.

    Args:
        config: The configuration.
        clock: Time source; the wall clock when None.
        registry: Metrics registry; a fresh one when None.
        migrate: Apply pending migrations (safe with concurrent starters).

    Returns:
        The dependencies; close them (or use them as a context manager) when done.

    Raises:
        psycopg_pool.PoolTimeout: The database could not be reached.
        EmbeddedPostgresError: The embedded server (no database_url) did not start.
    """
    pool = open_pool(resolve_database_url(config), config.pool_min_size, config.pool_max_size)
    try:
        applied = apply_migrations(pool) if migrate else []
        blobs = LocalBlobStore(config.blob_root)
    except BaseException:
        pool.close()
        raise
    return ControlPlaneDeps(
        pool=pool,
        blobs=blobs,
        clock=clock if clock is not None else SystemClock(),
        registry=registry if registry is not None else CollectorRegistry(),
        applied_migrations=applied,
    )
