"""What the fault tests share: a PostgreSQL server a test may stop, and an in-process control plane."""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import psycopg
from prometheus_client import CollectorRegistry

from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.bootstrap import ControlPlaneDeps, load_policies
from control_plane.clock import Clock
from control_plane.config import ControlPlaneConfig
from control_plane.crypto import ensure_master_key_file
from control_plane.db.embedded import EmbeddedPostgres
from control_plane.db.pool import Pool
from control_plane.db.probe import DatabaseProbe
from control_plane.entrypoints.server import add_listen_port, build_server, wait_until_serving
from tests.integration.control_plane._support import REPO_ROOT


@contextmanager
def private_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of the test's own (pgserver's binaries), so stopping it disturbs no
    other test; stopped and deleted afterwards.

    Its data lives in a fresh directory under the system temp dir, not under pytest's
    `tmp_path`: as root, the server runs as pgserver's system user, which must traverse every
    parent, and each pytest session resets its base directory to mode 0700.
    """
    root = Path(tempfile.mkdtemp(prefix="atelier-faults-pg-"))
    server = EmbeddedPostgres(root / "postgres", database="postgres")
    url = server.start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # A throwaway server: durability costs time here and proves nothing.
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def control_plane_server(
    config: ControlPlaneConfig,
    pool: Pool,
    clock: Clock,
    *,
    database_probe: DatabaseProbe | None = None,
    registry: CollectorRegistry | None = None,
) -> Iterator[str]:
    """The real gRPC server, built as `serve` builds it, on `pool` (and `database_probe`, which
    the caller starts and stops, with its metrics in `registry`); yields its host:port."""
    deps = ControlPlaneDeps(
        pool=pool,
        blobs=LocalBlobStore(config.blob_root),
        clock=clock,
        keys=PostgresKeyStore(ensure_master_key_file(config.home / "master.key")),
        policies=load_policies(config),
        registry=registry if registry is not None else CollectorRegistry(),
    )
    server = build_server(config, deps, database_probe=database_probe)
    port = add_listen_port(server, config.listen_address)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


def wait_for(condition: Callable[[], bool], within_s: float) -> bool:
    """Polls `condition` until it holds (True) or `within_s` seconds pass (False)."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def noisy_png(approx_bytes: int, seed: int = 0) -> bytes:
    """A valid RGB PNG of random pixels (stored uncompressed) of about `approx_bytes` bytes."""
    side = max(1, int((approx_bytes / 3) ** 0.5))
    pixels = random.Random(seed).randbytes(side * side * 3)
    raw = b"".join(b"\x00" + pixels[row * side * 3 : (row + 1) * side * 3] for row in range(side))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_SERVE = ("-m", "control_plane", "serve")

_EXEC_UNDER_FILE_SIZE_LIMIT = (
    "import os, resource, signal, sys; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)
"""Run as `python -c THIS LIMIT ARGS...`: sets the limit in a fresh interpreter, then execs `python ARGS...`
(an ignored signal stays ignored across exec)."""


@contextmanager
def control_plane_process(
    env: Mapping[str, str], log: Path, *, file_size_limit_bytes: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m control_plane serve` as its own process (configured by `env`, added to
    ours), serving on a free port, logging to `log`; yields its address and the process,
    which a test may kill. Stopped with SIGTERM (SIGKILL if it lingers) afterwards.

    With `file_size_limit_bytes` it runs under RLIMIT_FSIZE with SIGXFSZ ignored, so a write past
    the limit fails with EFBIG instead of killing it. The limit is set by a fresh interpreter that
    then execs the server, not by a `preexec_fn`: that would run Python in a child forked from this
    process while gRPC's threads run here, which can hang the child before exec (seen in CI).
    """
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, *_SERVE]
    if file_size_limit_bytes is not None:
        command = [sys.executable, "-c", _EXEC_UNDER_FILE_SIZE_LIMIT, str(file_size_limit_bytes), *_SERVE]
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={
                **os.environ,
                "ATELIER_CONTROL_PLANE_LISTEN": address,
                "ATELIER_CONTROL_PLANE_METRICS_PORT": "0",
                **env,
            },
            stdout=log_file,
            stderr=log_file,
        )
    try:
        try:
            wait_until_serving(address, timeout_s=60)
        except TimeoutError:
            raise AssertionError(f"the control plane did not start: {log.read_text()[-3000:]}") from None
        yield address, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


@contextmanager
def small_tmpfs(directory: Path, size: str = "2m") -> Iterator[bool]:
    """Mounts a tmpfs of `size` on `directory` (unmounted afterwards); yields whether mounting was
    permitted (it needs CAP_SYS_ADMIN)."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def fill_up(directory: Path) -> Path:
    """Writes a filler file until the filesystem under `directory` has no byte left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as file:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    file.write(b"\0" * size)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
    return filler
