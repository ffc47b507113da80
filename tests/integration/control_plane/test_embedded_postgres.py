"""The embedded PostgreSQL the launcher starts: it outlives its starter and stops on request."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from control_plane.db.embedded import EmbeddedPostgres
from tests.integration.control_plane._support import REPO_ROOT


@pytest.fixture
def home() -> Iterator[Path]:
    # Not tmp_path: pytest's paths can exceed the 107-byte limit of a Unix socket name, and
    # this test should exercise the usual case of the socket living in the data directory.
    path = Path(tempfile.mkdtemp(prefix="atelier-home-"))
    yield path
    EmbeddedPostgres(path / "postgres").stop()
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_server_keeps_running_after_the_starting_process_exits(home: Path) -> None:
    started = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from control_plane.db.embedded import EmbeddedPostgres; "
            "print(EmbeddedPostgres(Path(sys.argv[1])).start())",
            str(home / "postgres"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()

    server = EmbeddedPostgres(home / "postgres")
    assert server.is_running()
    assert server.url() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("atelier",)
    # Starting again is a no-op that returns the same URL.
    assert server.start() == url

    assert server.stop() is True
    assert not server.is_running()
    assert server.url() is None
    assert server.stop() is False


def test_embedded_server_can_be_stopped_and_started_again_in_one_process(home: Path) -> None:
    server = EmbeddedPostgres(home / "postgres")
    first_url = server.start()
    assert server.stop() is True
    second_url = server.start()
    assert server.is_running()
    with psycopg.connect(second_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert first_url == second_url


def test_a_stale_pid_file_naming_another_live_process_is_not_a_server(home: Path) -> None:
    """After a crash, postmaster.pid may name a pid the system gave to another process since: that
    process is neither reported as the server nor signalled (here it is this test's own process)."""
    data_dir = home / "postgres"
    data_dir.mkdir()
    (data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n{data_dir}\n0\n5432\n/tmp\n")
    server = EmbeddedPostgres(data_dir)
    assert not server.is_running()
    assert server.url() is None
    assert server.stop() is False  # and this process received no SIGINT
