"""The PostgreSQL connection pool every entry point shares."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias, TypeVar

import psycopg
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

Connection: TypeAlias = psycopg.Connection[TupleRow]
Pool: TypeAlias = ConnectionPool[Connection]

_T = TypeVar("_T")
_logger = logging.getLogger(__name__)

SCRAPE_CONNECTION_WAIT_S = 1.0
"""How long a metrics scrape waits for a connection before leaving the database's figures out."""

IDLE_CHECK_S = 1.0
"""A pooled connection idle longer than this is pinged before it is handed out."""

PREPARE_THRESHOLD = 1
"""Executions of a statement on a connection before psycopg prepares it server-side."""

PREPARED_MAX = 200
"""Prepared statements a connection keeps (least recently used ones are deallocated)."""


class _IdleConnectionCheck:
    """The pool's check of a connection it hands out: a round trip only after idleness.

    Pinging every connection at checkout (`ConnectionPool.check_connection`) costs one round
    trip per RPC, as much as a hot RPC's own statement. A connection that was in use a moment
    ago is trusted unless libpq already knows it is broken; one idle longer than IDLE_CHECK_S
    (a database restart, an idle timeout, a proxy) is pinged as before. A connection that broke
    within that moment fails its RPC as DATABASE_UNAVAILABLE and is discarded when returned,
    and after an outage the server's `DatabaseProbe` checks every idle connection
    (`pool.check`) before it reports the database reachable again.
    """

    def __init__(self, idle_s: float = IDLE_CHECK_S, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._idle_s = idle_s
        self._monotonic = monotonic
        # By id(): psycopg connections take no attributes. An entry is dropped at checkout.
        self._returned_at: dict[int, float] = {}

    def returned(self, conn: Connection) -> None:
        """The pool's `reset` callback: notes when `conn` came back."""
        self._returned_at[id(conn)] = self._monotonic()

    def check(self, conn: Connection) -> None:
        """The pool's `check` callback; raises a psycopg error when `conn` is not usable."""
        returned_at = self._returned_at.pop(id(conn), None)
        if conn.closed or conn.pgconn.status != ConnStatus.OK:
            raise psycopg.OperationalError("the pooled connection is broken")
        if returned_at is None or self._monotonic() - returned_at > self._idle_s:
            ConnectionPool.check_connection(conn)


def open_pool(
    url: str,
    min_size: int = 2,
    max_size: int = 16,
    *,
    name: str = "atelier-control-plane",
    timeout_s: float = 30.0,
    idle_check_s: float = IDLE_CHECK_S,
) -> Pool:
    """Opens a pool of autocommit connections and waits until `min_size` are ready.

    Connections are in autocommit mode, so nothing runs in an implicit transaction: every
    state change opens its own with `with conn.transaction():`, and reads leave no
    transaction idle. A connection idle for a while is checked before it is handed out, so a
    pool survives a database restart (see `_IdleConnectionCheck`). Statements are prepared on
    their second execution on a connection (PREPARE_THRESHOLD), so the hot path's statements
    are parsed and planned once per connection, not once per call.

    Args:
        url: libpq connection string or URL.
        min_size: Connections kept open, >= 0.
        max_size: Most connections open at once, >= max(1, min_size).
        name: Pool name, also sent as `application_name` so the server's
            `pg_stat_activity` shows who holds a connection.
        timeout_s: How long to wait for the first connections, and later how long a caller
            waits for a free connection before `psycopg_pool.PoolTimeout`.
        idle_check_s: A connection idle longer than this is pinged before it is handed out.

    Returns:
        The opened pool; close it with `pool.close()`.

    Raises:
        psycopg_pool.PoolTimeout: The database could not be reached within `timeout_s`.
    """
    idle_check = _IdleConnectionCheck(idle_check_s)

    def configure(conn: Connection) -> None:
        conn.prepared_max = PREPARED_MAX

    pool: Pool = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, "application_name": name, "prepare_threshold": PREPARE_THRESHOLD},
        configure=configure,
        check=idle_check.check,
        reset=idle_check.returned,
        name=name,
        timeout=timeout_s,
        open=False,
    )
    try:
        pool.open(wait=True, timeout=timeout_s)
    except BaseException:
        pool.close()
        raise
    return pool


CONNECTION_WAIT_MARGIN_S = 1.0
"""Most of a caller's remaining deadline an RPC keeps for answering after waiting for a connection."""


def connection_wait_s(deadline_remaining_s: float | None, pool_timeout_s: float) -> float:
    """How long an RPC may wait for a pooled connection before answering UNAVAILABLE.

    While the database is down or restarting, `pool.connection()` waits for a working
    connection (the pool keeps trying to reconnect). An RPC whose caller set a deadline stops
    waiting early enough to answer UNAVAILABLE itself, so the caller learns the database is the
    problem instead of seeing its own DEADLINE_EXCEEDED: it keeps a fifth of the remaining time
    (at most CONNECTION_WAIT_MARGIN_S) for the reply.

    Args:
        deadline_remaining_s: Seconds until the caller's deadline; None when it set none.
        pool_timeout_s: The pool's own wait (`pool.timeout`), the bound without a deadline.

    Returns:
        Seconds to wait, 0 <= result <= pool_timeout_s.
    """
    if deadline_remaining_s is None:
        return pool_timeout_s
    margin = min(CONNECTION_WAIT_MARGIN_S, deadline_remaining_s / 5)
    return max(0.0, min(pool_timeout_s, deadline_remaining_s - margin))


@contextmanager
def pipelined_transaction(conn: Connection) -> Iterator[None]:
    """A transaction on an autocommit connection whose BEGIN travels with its first statement.

    `with conn.transaction():` waits for BEGIN's answer before sending the first statement,
    so a one-statement transaction costs three round trips (five in psycopg's pipeline mode,
    which syncs at BEGIN and again at the end). Here BEGIN and the statements are pipelined
    and COMMIT is sent with the final sync: two round trips, for the hot path's
    StoreContent. Reading a result (`fetchone`) waits for it as usual. Leaving the block by
    an exception rolls back.

    Raises:
        RuntimeError: The connection is not in autocommit mode or already in a transaction.
    """
    if not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError("pipelined_transaction needs an idle autocommit connection")
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            yield
            conn.execute("COMMIT")
    except BaseException:
        # After a failed statement the pipeline's sync left the transaction aborted; after any
        # other error it is still open. Either way it ends here (the pool would roll back too).
        if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        raise


def expect_row(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    """Returns the row of a statement that always yields one (`INSERT ... RETURNING`).

    Raises:
        RuntimeError: There was none, which means a bug, not bad input.
    """
    if row is None:
        raise RuntimeError("the statement returned no row where one was certain")
    return row


def read_for_scrape(pool: Pool, read: Callable[[Connection], _T]) -> _T | None:
    """`read(conn)` for a metric read from the database at scrape time; None when the database does
    not answer within SCRAPE_CONNECTION_WAIT_S.

    While the database is down a scrape then leaves those figures out (alerts on `absent()` see it)
    and still returns the others in time, instead of hanging past Prometheus' scrape timeout.
    """
    try:
        with pool.connection(timeout=SCRAPE_CONNECTION_WAIT_S) as conn:
            return read(conn)
    except (PoolTimeout, psycopg.OperationalError) as error:
        _logger.warning("metrics read skipped: database unavailable error=%s", type(error).__name__)
        return None
