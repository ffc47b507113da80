"""The pool's hot-path settings on a real PostgreSQL: a pipelined transaction commits in two round
trips and rolls back on any error; connections are pinged only after sitting idle."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import psycopg
import pytest

from control_plane.db.pool import Connection, Pool, open_pool, pipelined_transaction


@pytest.fixture
def scratch(pool: Pool) -> Iterator[Connection]:
    """A pooled connection with an empty temporary table `scratch (x int PRIMARY KEY)`."""
    with pool.connection() as conn:
        conn.execute("CREATE TEMP TABLE scratch (x int PRIMARY KEY)")
        try:
            yield conn
        finally:
            conn.execute("DROP TABLE scratch")


def _count(conn: Connection) -> int:
    row = conn.execute("SELECT count(*) FROM scratch").fetchone()
    assert row is not None
    return int(row[0])


def test_a_pipelined_transaction_commits_in_two_round_trips(scratch: Connection) -> None:
    with tempfile.TemporaryFile("w+") as trace:
        scratch.pgconn.trace(trace.fileno())
        with pipelined_transaction(scratch):
            row = scratch.execute("INSERT INTO scratch VALUES (1) RETURNING x").fetchone()
        scratch.pgconn.untrace()
        trace.seek(0)
        messages = [(line.split("\t")[1], line.split("\t")[3].strip()) for line in trace]
    assert row == (1,)
    assert _count(scratch) == 1
    # BEGIN and the INSERT go out before the first answer is awaited; one sync (with COMMIT).
    first_answer = next(i for i, (direction, _) in enumerate(messages) if direction == "B")
    assert [name for direction, name in messages[:first_answer] if name == "Execute"] == ["Execute"] * 2
    assert [name for _, name in messages].count("ReadyForQuery") == 1


@pytest.mark.parametrize("failure", ["exception", "failed statement", "failed at commit"])
def test_a_pipelined_transaction_rolls_back_on_any_error(scratch: Connection, failure: str) -> None:
    scratch.execute("INSERT INTO scratch VALUES (1)")
    with pytest.raises((LookupError, psycopg.errors.UniqueViolation)), pipelined_transaction(scratch):
        scratch.execute("INSERT INTO scratch VALUES (2)")
        if failure == "exception":
            raise LookupError("the caller's own refusal")
        duplicate = scratch.execute("INSERT INTO scratch VALUES (1)")
        if failure == "failed statement":
            duplicate.fetchone()
    assert _count(scratch) == 1
    assert scratch.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_pipelined_transaction_refuses_a_connection_already_in_one(scratch: Connection) -> None:
    with scratch.transaction(), pytest.raises(RuntimeError, match="idle autocommit"), pipelined_transaction(scratch):
        pass


def _backend_pid(pool: Pool) -> int:
    with pool.connection() as conn:
        return conn.info.backend_pid


def _terminate(database_url: str, pid: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_connection_idle_past_the_check_time_is_pinged_and_replaced_when_dead(database_url: str) -> None:
    with open_pool(database_url, min_size=1, max_size=1, idle_check_s=0.0) as small:
        _terminate(database_url, _backend_pid(small))
        with small.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_connection_used_a_moment_ago_is_not_pinged_and_a_dead_one_fails_once(database_url: str) -> None:
    # The trade-off of skipping the ping: the call that meets the dead connection fails (the
    # RPC answers DATABASE_UNAVAILABLE), and the pool replaces it for the next one.
    with open_pool(database_url, min_size=1, max_size=1, idle_check_s=3600.0) as small:
        _terminate(database_url, _backend_pid(small))
        with pytest.raises(psycopg.OperationalError), small.connection() as conn:
            conn.execute("SELECT 1")
        with small.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
