"""PostgreSQL adapters: the connection pool, migrations and the embedded server."""

from control_plane.db.embedded import EmbeddedPostgres, EmbeddedPostgresError
from control_plane.db.migrations import MigrationError, apply_migrations, pending_migrations
from control_plane.db.pool import Connection, Pool, open_pool

__all__ = [
    "Connection",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "MigrationError",
    "Pool",
    "apply_migrations",
    "open_pool",
    "pending_migrations",
]
