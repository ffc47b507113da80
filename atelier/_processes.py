"""Starting, waiting for and stopping the local cluster's background processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from transport.tls import TlsConfig


class StartError(RuntimeError):
    """A component did not come up; the message says which and where its log is."""


def spawn_daemon(argv: Sequence[str], log_path: Path, env: Mapping[str, str]) -> int:
    """Starts `argv` in its own session, detached from this terminal; returns its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,  # survives `atelier up` returning and a Ctrl-C in its terminal
        )
    return process.pid


def is_running(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this very process still answers kill(0): reap it if it is ours.
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return finished == 0


def stop_session(leader_pid: int | None, timeout_s: float = 30.0) -> None:
    """Stops a daemon started by `spawn_daemon` and every process it started.

    Ray's head spawns workers in process groups of their own, but all stay in the
    leader's session: SIGTERM the whole session, then SIGKILL what outlives `timeout_s`.
    """
    if leader_pid is None:
        return
    members = _session_members(leader_pid)
    _signal_all(members, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        members = [pid for pid in members if is_running(pid)]
        if not members:
            return
        time.sleep(0.2)
    _signal_all(members, signal.SIGKILL)


def _session_members(session_id: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session_id:
                    members.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def health_status(address: str, service: str = "", timeout_s: float = 2.0, tls: TlsConfig | None = None) -> str:
    """The grpc.health.v1 status of `service` at `address` (dialled as `tls` says, plaintext
    when None), or the error code's name."""
    with (tls or TlsConfig()).channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return exc.code().name  # type: ignore[no-any-return]
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def wait_until_serving(
    what: str,
    address: str,
    timeout_s: float,
    log_path: Path,
    still_alive: Callable[[], bool] = lambda: True,
    tls: TlsConfig | None = None,
) -> None:
    """Polls the health service at `address` (dialled as `tls` says) until it answers SERVING.

    Raises:
        StartError: the deadline passed or the process died first.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if health_status(address, tls=tls) == "SERVING":
            return
        if not still_alive():
            raise StartError(f"{what} exited during start-up; see {log_path}")
        time.sleep(0.25)
    raise StartError(f"{what} did not answer health checks at {address} within {timeout_s:.0f}s; see {log_path}")
