"""Reaching the running local cluster from a command: its state, the operator key, gRPC stubs."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from atelier.cli._output import CommandError
from atelier.settings import ClusterSettings, SettingsError
from atelier.state import ClusterState, load_operator_key
from protos.atelier.v1 import control_plane_pb2_grpc, inference_pb2_grpc, training_pb2_grpc

# Images are up to a few MiB each, eight to a response.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

DEFAULT_TIMEOUT_S = 10.0
"""Deadline of a command's calls unless its `--timeout` says otherwise: the control plane answers
within it (UNAVAILABLE when its database is down), so a command never hangs on a sick cluster."""


def settings() -> ClusterSettings:
    try:
        return ClusterSettings.from_env()
    except SettingsError as exc:
        raise CommandError(str(exc)) from None


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")


def add_timeout_flag(parser: argparse.ArgumentParser, default_s: float = DEFAULT_TIMEOUT_S) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=default_s,
        metavar="SECONDS",
        help=f"deadline of each call to the cluster (default {default_s:g})",
    )


@dataclass
class Connection:
    home: Path
    key_id: str
    """Id of the operator key the calls carry (`ak_...`)."""
    state: ClusterState
    metadata: tuple[tuple[str, str], ...]
    control_plane: control_plane_pb2_grpc.ControlPlaneStub
    inference: inference_pb2_grpc.InferenceStub
    training: training_pb2_grpc.TrainingDataStub


@contextmanager
def connect(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Connection]:
    """Stubs for the cluster `atelier up` started, authenticated with the operator key.

    Channels use TLS (and a client certificate) as `ATELIER_TLS_*` says. Every call made
    without a `timeout` of its own carries a deadline of `timeout_s` seconds.

    Raises:
        CommandError: no cluster is running from this home.
    """
    cluster_settings = settings()
    home = cluster_settings.home.resolve()
    state = ClusterState.load(home)
    key = load_operator_key(home)
    if state is None or key is None:
        raise CommandError(f"no atelier cluster is running from {home}; start one with 'atelier up'")
    options = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ]
    tls = cluster_settings.tls
    with (
        tls.channel(state.control_plane_address, options) as cp_plain,
        tls.channel(state.serve_grpc_address, options) as serve_plain,
    ):
        deadline = _DefaultDeadline(timeout_s)
        cp_channel = grpc.intercept_channel(cp_plain, deadline)
        serve_channel = grpc.intercept_channel(serve_plain, deadline)
        yield Connection(
            home=home,
            key_id="_".join(key.split("_")[1:3]),
            state=state,
            metadata=(("authorization", f"Bearer {key}"),),
            control_plane=control_plane_pb2_grpc.ControlPlaneStub(cp_channel),
            inference=inference_pb2_grpc.InferenceStub(serve_channel),
            training=training_pb2_grpc.TrainingDataStub(cp_channel),
        )


class _DefaultDeadline(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Sets the deadline of each call that has none."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    def _with_deadline(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if details.timeout is not None:
            return details
        return _CallDetails(
            details.method,
            self._timeout_s,
            details.metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_deadline(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_deadline(client_call_details), request)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: object
    credentials: object
    wait_for_ready: bool | None = None
    compression: object = None


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Turns a failed call into a one-line `CommandError` carrying its status code."""
    try:
        yield
    except grpc.RpcError as exc:
        raise CommandError.from_rpc(exc) from None
