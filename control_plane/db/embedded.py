"""An embedded PostgreSQL server (binaries from the `pgserver` package), for `atelier up`.

The server outlives the process that starts it: `atelier up` starts it and returns,
the control plane connects to it, and `atelier down` (another process) stops it. pgserver's
own handles stop the server when the last Python process using it exits; we open ours with
`cleanup_mode=None` so it never does, and stop it ourselves (a fast shutdown).

It listens on a Unix socket only (in its data directory, or a short runtime path when
that would be too long for a socket name), never on TCP.

Running as root: PostgreSQL refuses to, so pgserver creates a system user `pgserver`,
hands it the data directory and makes the directories above it traversable (g+rx, o+rx).
`stop` signals the postmaster as `pg_ctl stop` would, which root may do to any process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import time
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
        """Whether a server is running on this data directory."""
        return self._postmaster_pid() is not None

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stops the server (fast shutdown: open sessions are ended, data is flushed).

        Returns:
            True when a running server was stopped, False when none was running.

        Raises:
            EmbeddedPostgresError: the server did not stop within `timeout_s`.
        """
        pid = self._postmaster_pid()
        if pid is None:
            return False
        # SIGINT is PostgreSQL's fast shutdown, what `pg_ctl stop -m fast` sends. Signalling it
        # ourselves needs no child process: forking pg_ctl (as the data directory's owner, so a
        # fork, not a vfork) from a process with busy gRPC threads can fail before it executes.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while self._postmaster_pid() == pid:
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL in {self.data_dir} did not stop within {timeout_s:.0f} s; "
                    f"see {self.data_dir / 'log'}"
                )
            time.sleep(0.05)
        _logger.info("embedded postgres stopped data_dir=%s", self.data_dir)
        return True

    def _postmaster_pid(self) -> int | None:
        # What `pg_ctl status` does, without a child process: the pid in postmaster.pid, if alive.
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().partition("\n")[0].strip()
        except FileNotFoundError:
            return None
        if not first_line.isdigit():
            return None  # being written or removed right now
        pid = int(first_line)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # a stale file left by a crash
        except PermissionError:
            pass  # alive, owned by pgserver's system user
        # After a crash the pid may since belong to another process: never signal that one.
        with contextlib.suppress(OSError):  # no /proc (not Linux): trust the pid, as pg_ctl does
            program = Path(f"/proc/{pid}/cmdline").read_bytes().partition(b"\0")[0]
            if os.path.basename(program) != b"postgres":
                return None
        return pid

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
