"""An embedded PostgreSQL server (binaries from the `pgserver` package), for `atelier up`.

The server outlives the process that starts it: `atelier up` starts it and returns,
the control plane connects to it, and `atelier down` (another process) stops it. pgserver's
own handles stop the server when the last Python process using it exits; we open ours with
`cleanup_mode=None` so it never does, and stop it ourselves with `pg_ctl stop`.

It listens on a Unix socket only (in its data directory, or a short runtime path when
that would be too long for a socket name), never on TCP.

Running as root: PostgreSQL refuses to, so pgserver creates a system user `pgserver`,
hands it the data directory and makes the directories above it traversable (g+rx, o+rx).
`stop` runs `pg_ctl` as the data directory's owner for the same reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import subprocess
import warnings
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

import psycopg
from psycopg import sql

_logger = logging.getLogger(__name__)


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started, reached or stopped."""


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in one directory (by default `home/postgres`).

    Every method may be called from any process: state is read from the data directory
    (`postmaster.pid`), not kept in this object.
    """

    def __init__(self, data_dir: Path, *, database: str = "atelier") -> None:
        """Describes the server; starts nothing.

        Args:
            data_dir: PGDATA. Created on first start; its parent must be creatable.
            database: Database the URLs point at; created on start when missing.
        """
        self.data_dir = data_dir.expanduser().resolve()
        self.database = database

    def start(self, timeout_s: float = 60.0) -> str:
        """Starts the server unless it already runs, creates the database, returns its URL.

        Idempotent: a second call (from any process) returns the URL of the running server.
        The server keeps running after this process exits; call `stop` to end it.

        Args:
            timeout_s: How long to wait for the server to accept connections.

        Returns:
            A libpq URL of `database` over the server's Unix socket.

        Raises:
            EmbeddedPostgresError: initdb or the server failed; the message points at the
                server log.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # The constructor, not pgserver.get_server: get_server caches one handle per data
            # directory per process and would not restart a server stopped since.
            _pgserver().PostgresServer(self.data_dir, cleanup_mode=None)
        except Exception as error:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL in {self.data_dir} did not start ({error}); see {self.data_dir / 'log'}"
            ) from error
        admin_url = self._url_for("postgres")
        if admin_url is None:
            raise EmbeddedPostgresError(f"embedded PostgreSQL in {self.data_dir} started but wrote no postmaster.pid")
        self._ensure_database(admin_url, timeout_s)
        url = self._url_for(self.database)
        if url is None:  # stopped by someone else between the two reads
            raise EmbeddedPostgresError(f"embedded PostgreSQL in {self.data_dir} stopped while starting")
        return url

    def url(self) -> str | None:
        """Returns the URL of `database` when the server is running, else None."""
        return self._url_for(self.database) if self.is_running() else None

    def is_running(self) -> bool:
        """Whether a server is running on this data directory (asks `pg_ctl status`)."""
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        result = self._pg_ctl(["status"], timeout_s=10.0)
        # pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
        return result.returncode == 0

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stops the server (fast shutdown: open sessions are ended, data is flushed).

        Returns:
            True when a running server was stopped, False when none was running.

        Raises:
            EmbeddedPostgresError: pg_ctl failed, or the server did not stop within `timeout_s`.
        """
        if not self.is_running():
            return False
        # A second try: pg_ctl runs as the data directory's owner, which forces a fork() (not vfork), and
        # in a process with busy gRPC threads the child can fail before it ever executes pg_ctl.
        for attempt in range(2):
            result = self._pg_ctl(["stop", "-m", "fast", "-w", "-t", str(int(timeout_s))], timeout_s=timeout_s + 5)
            if result.returncode == 0 or not self.is_running():
                break
            if attempt == 1:
                raise EmbeddedPostgresError(
                    f"pg_ctl stop failed for {self.data_dir}: {result.stderr.strip() or result.stdout.strip()}"
                )
        _logger.info("embedded postgres stopped data_dir=%s", self.data_dir)
        return True

    def _url_for(self, database: str) -> str | None:
        # postmaster.pid lines: pid, data dir, start time, port, socket dir, listen address, ...
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        if len(lines) < 5 or not lines[3].strip().isdigit() or not lines[4].strip():
            return None
        port, socket_dir = lines[3].strip(), lines[4].strip()
        # A URL (not key=value) so it can travel in ATELIER_DATABASE_URL; libpq takes a Unix
        # socket directory as the percent-encoded `host` query parameter.
        return f"postgresql://postgres@/{quote(database, safe='')}?host={quote(socket_dir, safe='')}&port={port}"

    def _ensure_database(self, admin_url: str, timeout_s: float) -> None:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=int(timeout_s)) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if exists:
                return
            # Another process may create it between our check and our CREATE.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def _pg_ctl(self, args: list[str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(postgres_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), *args],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
                user=self._system_user(),
            )
        except subprocess.TimeoutExpired as error:
            raise EmbeddedPostgresError(f"pg_ctl {args[0]} on {self.data_dir} took over {timeout_s:.0f} s") from error

    def _system_user(self) -> str | None:
        # PostgreSQL's tools refuse to run as root; run them as the data directory's owner
        # (pgserver's `pgserver` user when root started the server).
        if os.geteuid() != 0:
            return None
        owner = pwd.getpwuid(self.data_dir.stat().st_uid).pw_name
        return None if owner == "root" else owner


def _pgserver() -> ModuleType:
    # Imported on use: `import control_plane` must stay cheap, and pgserver warns at import
    # time when XDG_RUNTIME_DIR is unset (it then uses /tmp/runtime-<uid>, which is fine).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver
    return pgserver


def postgres_bin_dir() -> Path:
    """Where pgserver's PostgreSQL binaries (postgres, pg_ctl, pgbench, ...) are installed."""
    # Found without importing pgserver (which starts nothing but is slow and noisy to import).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError("the pgserver package is not installed: pip install pgserver")
    return Path(spec.origin).parent / "pginstall" / "bin"
