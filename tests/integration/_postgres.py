"""PostgreSQL for integration tests: a server, and a fresh database per test session.

The server is `ATELIER_TEST_DATABASE_URL` when set (any PostgreSQL the tests may create
databases on, e.g. `postgresql://postgres@127.0.0.1:5432/postgres`), else an embedded
pgserver started in a temporary directory and stopped afterwards. Either way each session
gets its own uniquely named database, dropped at the end, so parallel runs never meet.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from control_plane.db.embedded import EmbeddedPostgres

TEST_DATABASE_URL_VAR = "ATELIER_TEST_DATABASE_URL"


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields the URL of a PostgreSQL server the tests may create databases on."""
    url = os.environ.get(TEST_DATABASE_URL_VAR, "").strip()
    if url:
        yield url
        return
    root = Path(tempfile.mkdtemp(prefix="atelier-test-pg-"))
    server = EmbeddedPostgres(root / "postgres", database="postgres")
    try:
        url = server.start()
        with psycopg.connect(url, autocommit=True) as conn:
            # A throwaway server: durability buys nothing and costs most of each TRUNCATE.
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("ALTER SYSTEM SET synchronous_commit = off")
            conn.execute("SELECT pg_reload_conf()")
        yield url
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server_url: str, prefix: str = "atelier_test") -> Iterator[str]:
    """Creates a uniquely named empty database, yields its URL, drops it afterwards."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            # FORCE ends sessions a failed test left open, so the drop cannot hang.
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
