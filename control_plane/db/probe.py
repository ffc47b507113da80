"""Whether the database answers, known without asking it on every call.

Health checks and RPCs read `DatabaseProbe.reachable`, which a background thread keeps
current by running `SELECT 1` on a connection of its own every interval. A health check
therefore costs no query, and while the database is down an RPC fails at once with
UNAVAILABLE instead of waiting for a pooled connection that cannot come.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import psycopg

_logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2
"""How long one probe may wait for a new connection (libpq's `connect_timeout`, whole seconds, >= 2)."""


class DatabaseProbe:
    """Probes the database at `conninfo` every `interval_s` seconds in a daemon thread.

    The probe's own connection is outside the server's pool, so a pool exhausted by slow
    RPCs is not mistaken for a database that is down.
    """

    def __init__(
        self,
        conninfo: str | Callable[[], str],
        *,
        interval_s: float,
        on_recovery: Callable[[], None] | None = None,
    ) -> None:
        """Describes the probe; nothing runs until `start`.

        Args:
            conninfo: libpq connection string or URL of the database, or a function returning
                it (as a pool's `conninfo` may be, for credentials that rotate).
            interval_s: Seconds between probes, > 0.
            on_recovery: Called when the database answers again after an outage, before
                `reachable` turns True: the server passes its pool's `check`, so the connections
                the outage broke are replaced before calls are let through again (else the first
                calls after a restart would borrow a dead connection and fail).
        """
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._conninfo = conninfo
        self._interval_s = interval_s
        self._on_recovery = on_recovery
        self._listeners: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first_result = threading.Event()
        self._reachable = False
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._thread = threading.Thread(target=self._run, name="database-probe", daemon=True)

    @property
    def reachable(self) -> bool:
        """Whether the last probe reached the database (False before the first one ends)."""
        return self._reachable

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """Calls `listener` with the current reachability now and with each change after (from the
        probe thread)."""
        with self._lock:
            self._listeners.append(listener)
            listener(self._reachable)

    def start(self, first_result_within_s: float = CONNECT_TIMEOUT_S + 1.0) -> DatabaseProbe:
        """Starts probing and waits (up to `first_result_within_s`) for the first result."""
        self._thread.start()
        self._first_result.wait(first_result_within_s)
        return self

    def stop(self) -> None:
        """Stops probing and closes the probe's connection."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> DatabaseProbe:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while True:
                self._record(self._probe_once())
                self._first_result.set()
                if self._stop.wait(self._interval_s):
                    return
        finally:
            self._close()

    def _probe_once(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self._conninfo() if callable(self._conninfo) else self._conninfo,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    application_name="atelier-database-probe",
                )
            self._conn.execute("SELECT 1")
            return True
        except psycopg.Error as error:
            if self._reachable or not self._first_result.is_set():
                _logger.warning("database unreachable error=%s", type(error).__name__)
            self._close()
            return False

    def _record(self, reachable: bool) -> None:
        with self._lock:
            if reachable == self._reachable:
                return
            if reachable and self._first_result.is_set() and self._on_recovery is not None:
                try:
                    self._on_recovery()
                except Exception:  # the probe must go on; the next calls will tell
                    _logger.exception("database recovery hook failed")
            self._reachable = reachable
            if reachable:
                _logger.info("database reachable")
            for listener in self._listeners:
                listener(reachable)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
