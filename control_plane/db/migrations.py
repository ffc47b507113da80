"""Schema migrations: numbered plain-SQL files applied in order, each in its own transaction.

Files live in `control_plane/db/migrations/` as `NNNN_description.sql` and are append-only:
change the schema by adding a file, never by editing one that has shipped. Applied versions
are recorded in `schema_migrations`. A session-level advisory lock serialises migrators, so
two processes starting at once (the launcher and a server, two replicas) are safe: the second
waits, then finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import pq

from control_plane.db.pool import Connection, Pool

_logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Any fixed 64-bit number works; this one spells "atelier" in ASCII, so it is recognisable in
# pg_locks and unlikely to collide with another application's lock on a shared server.
_ADVISORY_LOCK_KEY = int.from_bytes(b"atelier", "big")

_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """The migration files or the database's record of them are inconsistent."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: str
    """The file name without `.sql`, e.g. `0001_initial`; recorded once applied."""

    sql: str
    """The statements, run as one transaction."""

    @property
    def checksum(self) -> str:
        """SHA-256 of the SQL, hex: recorded to notice a shipped file being edited."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Reads the migration files in version order.

    Raises:
        MigrationError: A file name does not follow `NNNN_description.sql`, or two files
            share a number.
    """
    migrations: list[Migration] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_description.sql")
        number = match.group(1)
        if number in seen:
            raise MigrationError(f"{path.name} and {seen[number]} share the number {number}")
        seen[number] = path.name
        migrations.append(Migration(version=path.stem, sql=path.read_text(encoding="utf-8")))
    return migrations


def apply_migrations(target: Pool | Connection) -> list[str]:
    """Applies every migration the database lacks, in order, one transaction each.

    Safe to call from several processes at once and on every start-up: it waits for any
    other migrator, and applies nothing when the schema is current.

    Args:
        target: A pool (a connection is borrowed) or a connection outside any transaction.

    Returns:
        The versions applied by this call, e.g. `["0001_initial"]`; empty when current.

    Raises:
        MigrationError: The files are misnamed, or the connection is inside a transaction.
        psycopg.Error: A migration failed; it was rolled back and later ones not tried.
    """
    if isinstance(target, psycopg.Connection):
        return _apply_on_connection(target)
    with target.connection() as conn:
        return _apply_on_connection(conn)


def pending_migrations(conn: Connection) -> list[str]:
    """Returns the versions not yet applied, in order, without applying them."""
    applied = _applied_versions(conn) if _has_migrations_table(conn) else {}
    return [m.version for m in load_migrations() if m.version not in applied]


def _apply_on_connection(conn: Connection) -> list[str]:
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise MigrationError("apply_migrations needs a connection that is not in a transaction")
    migrations = load_migrations()
    was_autocommit = conn.autocommit
    # The advisory lock is held by the session across several transactions, so it must be
    # taken outside any transaction: autocommit for the duration.
    conn.autocommit = True
    applied_now: list[str] = []
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        try:
            conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    text PRIMARY KEY,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            applied = _applied_versions(conn)
            for migration in migrations:
                recorded = applied.get(migration.version)
                if recorded is not None:
                    if recorded != migration.checksum:
                        # Warn rather than refuse: the database already has this version, and
                        # refusing to start would not undo the edit.
                        _logger.warning("migration changed after it was applied version=%s", migration.version)
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                        (migration.version, migration.checksum),
                    )
                _logger.info("migration applied version=%s", migration.version)
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    finally:
        conn.autocommit = was_autocommit
    return applied_now


def _has_migrations_table(conn: Connection) -> bool:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _applied_versions(conn: Connection) -> dict[str, str]:
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {version: checksum for version, checksum in rows}
