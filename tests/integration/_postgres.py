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
def postgres_server(environ: dict[str, str] | None = None) -> Iterator[str]:
    """Yields the URL of a PostgreSQL server the tests may create databases on."""
    url = (environ if environ is not None else os.environ).get(TEST_DATABASE_URL_VAR, "").strip()
    if url:
        yield url
        return
    root = Path(tempfile.mkdtemp(prefix="atelier-test-pg-"))
    server = EmbeddedPostgres(root / "postgres", database="postgres")
    try:
        yield server.start()
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
