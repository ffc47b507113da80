"""The environment every Ray node starts with: Serve's settings for the request path.

Serve reads these when its modules are imported, in every process of the node (proxy, controller,
replicas), so they belong to the environment of `ray start`: the launcher's for a local cluster, the
chart's `atelier.rayEnv` for every Ray container. The chart renders the same names and values; a chart
test holds the two together.

Each setting was measured with `benchmarks/serving_overhead.py` at steps=1 (see the README's benchmark
table): together they took the proxy stage from about 7.5 ms to 4.7 ms at p50 on a 2-core machine.
"""

from __future__ import annotations

PROXY_USE_GRPC = "RAY_SERVE_PROXY_USE_GRPC"
LOG_TO_STDERR = "RAY_SERVE_LOG_TO_STDERR"
REQUEST_PATH_LOG_BUFFER_SIZE = "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"
PROXY_MAX_MESSAGE_SIZE = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"
REPLICA_MAX_MESSAGE_LENGTH = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"


def serve_environment(max_message_bytes: int) -> dict[str, str]:
    """Serve's settings for a Ray node whose gRPC ingress accepts messages up to `max_message_bytes`.

    Args:
        max_message_bytes: The largest Generate request or reply (uploads, 8 PNGs); larger requests
            are refused by the proxy with RESOURCE_EXHAUSTED.
    """
    if max_message_bytes <= 0:
        raise ValueError(f"max_message_bytes must be > 0, got {max_message_bytes}")
    size = str(max_message_bytes)
    return {
        # Serve's gRPC proxy accepts 2 GiB messages unless told otherwise.
        PROXY_MAX_MESSAGE_SIZE: size,
        # The proxy hands each request to the gateway replica over the replica's own gRPC server
        # instead of a Ray actor call with a streaming generator: fewer copies and no object-store
        # bookkeeping per request.
        PROXY_USE_GRPC: "1",
        # ...whose receive limit is gRPC's 4 MiB by default: raised to the proxy's, or an edit
        # upload or an 8-image reply that the proxy accepted would fail between proxy and gateway.
        REPLICA_MAX_MESSAGE_LENGTH: size,
        # Serve's logs go to its files under the session's logs/serve/ only, not also to each
        # worker's stderr, which Ray's log monitor tails and republishes line by line.
        LOG_TO_STDERR: "0",
        # Access-log lines of the request path are written in batches (at once on an ERROR line)
        # rather than one write per line per process.
        REQUEST_PATH_LOG_BUFFER_SIZE: "1000",
    }


DIRECT_INGRESS = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
DIRECT_INGRESS_PORTS = (
    "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
)
PORT_QUARANTINE = "RAY_SERVE_PORT_QUARANTINE_S"


def direct_ingress_environment(grpc_port: int, http_port: int) -> dict[str, str]:
    """Serve's settings for a Ray node whose ingress replica (the one Gateway) serves clients itself.

    Serve then starts a gRPC and an HTTP server in the ingress replica, each on the lowest free port of
    its range; a range of one port pins the Gateway's to `grpc_port` (and `http_port`), so clients know
    where to dial. The proxy keeps serving on its own port.

    Args:
        grpc_port: The Gateway's gRPC port.
        http_port: The Gateway's HTTP port (Serve starts it; atelier does not use it).
    """
    if grpc_port == http_port:
        raise ValueError(f"the gRPC and HTTP ports must differ, got {grpc_port} for both")
    min_grpc, max_grpc, min_http, max_http = DIRECT_INGRESS_PORTS
    return {
        DIRECT_INGRESS: "1",
        min_grpc: str(grpc_port),
        max_grpc: str(grpc_port + 1),
        min_http: str(http_port),
        max_http: str(http_port + 1),
        # A released port is withheld for 150 s by default (so no client reaches another replica on
        # it): with one port in the range, a restarted Gateway would find none free that long.
        PORT_QUARANTINE: "0",
    }
