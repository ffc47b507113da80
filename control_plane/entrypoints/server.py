"""The control plane's gRPC server: ControlPlane, health and reflection on one port."""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import FrameType

import grpc
import prometheus_client
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control_plane.bootstrap import ControlPlaneDeps, bootstrap
from control_plane.config import ControlPlaneConfig
from control_plane.db.probe import DatabaseProbe
from control_plane.entrypoints.interceptor import ControlPlaneInterceptor
from control_plane.entrypoints.servicers import ControlPlaneServicer, TrainingDataServicer
from control_plane.metrics import DatabaseStateCollector
from control_plane.rate_limits import key_rate_limiter
from control_plane.sweeper import SweepLagCollector, SweepLoop
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc, training_pb2, training_pb2_grpc
from transport.tls import TlsConfig

_logger = logging.getLogger(__name__)

SERVICE_NAME = control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlane"].full_name
"""`atelier.v1.ControlPlane`, as health checks and reflection name it."""
TRAINING_SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingData"].full_name
"""`atelier.v1.TrainingData`: opt-outs, eligibility lookups, removal manifests."""

SHUTDOWN_GRACE_S = 10.0
"""How long in-flight RPCs may finish after SIGTERM before they are cancelled."""


def build_server(
    config: ControlPlaneConfig, deps: ControlPlaneDeps, *, database_probe: DatabaseProbe | None = None
) -> grpc.Server:
    """Builds (without binding or starting) a server with every control-plane service.

    Registers `atelier.v1.ControlPlane`, `atelier.v1.TrainingData`, the standard health
    service and reflection, behind the interceptor that maps errors and records metrics into
    `deps.registry`.

    With a `database_probe` (the caller starts and stops it), health answers SERVING for "" and
    each service only while the probe reaches the database, NOT_SERVING otherwise, and RPCs
    fail at once with UNAVAILABLE `DATABASE_UNAVAILABLE` while it does not. Without one, health
    always answers SERVING.

    Bind it with `add_listen_port(server, address)`, then `server.start()`.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.grpc_workers, thread_name_prefix="control-plane-rpc"),
        interceptors=[ControlPlaneInterceptor(deps.registry, key_limiter=key_rate_limiter(config, deps.clock))],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Without this a second server could bind the same port and steal half the calls.
            ("grpc.so_reuseport", 0),
        ],
    )
    database_up = (lambda: database_probe.reachable) if database_probe is not None else (lambda: True)
    servicer = ControlPlaneServicer(config=config, deps=deps, database_up=database_up)
    control_plane_pb2_grpc.add_ControlPlaneServicer_to_server(servicer, server)
    training_pb2_grpc.add_TrainingDataServicer_to_server(TrainingDataServicer(deps, database_up), server)
    deps.registry.register(SweepLagCollector(deps.pool, deps.policies, deps.clock))
    deps.registry.register(DatabaseStateCollector(deps.pool, deps.clock))

    health_servicer = health.HealthServicer()

    def report(database_reachable: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if database_reachable else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME, TRAINING_SERVICE_NAME):
            health_servicer.set(service, status)

    if database_probe is None:
        report(True)
    else:
        reachable = prometheus_client.Gauge(
            "atelier_database_reachable",
            "1 while the control plane's background probe reaches its database, 0 while it does not.",
            registry=deps.registry,
        )
        database_probe.subscribe(report)
        database_probe.subscribe(lambda up: reachable.set(1 if up else 0))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        (SERVICE_NAME, TRAINING_SERVICE_NAME, health_service, reflection.SERVICE_NAME), server
    )
    return server


class ListenError(RuntimeError):
    """The server cannot bind its address."""


def add_listen_port(server: grpc.Server, address: str, tls: TlsConfig | None = None) -> int:
    """Binds `address` (host:port; port 0 picks one) and returns the port bound.

    With `tls.server_enabled` the port speaks TLS only (and requires client certificates
    when `tls.mutual`); otherwise it is plaintext.

    Raises:
        ListenError: The address cannot be bound (in use, or not a local address).
    """
    try:
        port = (tls or TlsConfig()).add_port(server, address)
    except RuntimeError as error:
        raise ListenError(f"cannot listen on {address}: {error}") from error
    if port == 0:
        raise ListenError(f"cannot listen on {address}: is the port in use?")
    return port


def wait_until_serving(address: str, timeout_s: float = 30.0, tls: TlsConfig | None = None) -> None:
    """Blocks until the health service at `address` answers SERVING for the control plane.

    For launchers that start `python -m control_plane serve` as a subprocess; `tls` is how
    to dial it (plaintext when None).

    Raises:
        TimeoutError: It did not within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    with (tls or TlsConfig()).channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the control plane at {address} was not serving within {timeout_s:.0f} s")
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=min(remaining, 2.0))
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))


def serve(config: ControlPlaneConfig, *, stop: threading.Event | None = None, tls: TlsConfig | None = None) -> None:
    """Runs the control plane until SIGTERM or SIGINT (or until `stop` is set).

    Bootstraps (pool, migrations, blob store), starts the Prometheus endpoint when
    `config.metrics_port` is non-zero, serves gRPC on `config.listen_address`, and on a
    signal stops accepting calls, lets in-flight ones finish (up to SHUTDOWN_GRACE_S) and
    closes the pool.

    Args:
        config: The configuration.
        stop: Set it to stop the server; signal handlers are installed only when this
            runs in the main thread.
        tls: Certificates of the gRPC port (`TlsConfig.from_env()` in `__main__`);
            plaintext when None. The metrics port stays plain HTTP.
    """
    stop_event = stop if stop is not None else threading.Event()
    if threading.current_thread() is threading.main_thread():

        def request_stop(signum: int, frame: FrameType | None) -> None:
            _logger.info("stopping signal=%s", signal.Signals(signum).name)
            stop_event.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    with bootstrap(config, registry=prometheus_client.REGISTRY) as deps:
        if deps.applied_migrations:
            _logger.info("migrations applied versions=%s", ",".join(deps.applied_migrations))
        metrics_server = None
        if config.metrics_port:
            metrics_server, _ = prometheus_client.start_http_server(
                config.metrics_port, addr=_host_of(config.listen_address), registry=deps.registry
            )
        database_probe = DatabaseProbe(
            deps.pool.conninfo, interval_s=config.database_probe_interval_ms / 1000, on_recovery=deps.pool.check
        ).start()
        server = build_server(config, deps, database_probe=database_probe)
        port = add_listen_port(server, config.listen_address, tls)
        server.start()
        # The loop counts nothing itself: DatabaseStateCollector reads every sweep's deletions from the database.
        sweep_loop = None
        if config.sweep_interval_s > 0:
            sweep_loop = SweepLoop(
                deps.pool,
                deps.blobs,
                deps.policies,
                deps.clock,
                interval=timedelta(seconds=config.sweep_interval_s),
            ).start()
        _logger.info(
            "control plane serving address=%s port=%d metrics_port=%d tls=%s",
            config.listen_address,
            port,
            config.metrics_port,
            ("mutual" if tls.mutual else "on") if tls is not None and tls.server_enabled else "off",
        )
        try:
            stop_event.wait()
        finally:
            if sweep_loop is not None:
                sweep_loop.stop()
            server.stop(grace=SHUTDOWN_GRACE_S).wait()
            database_probe.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
            _logger.info("control plane stopped")


def _host_of(address: str) -> str:
    host = address.rpartition(":")[0]
    return host.strip("[]") or "0.0.0.0"
