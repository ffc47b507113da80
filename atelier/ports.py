"""Free TCP ports on the loopback interface, for clusters that must not collide (tests, benchmarks)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port_block(size: int, attempts: int = 50) -> int:
    """A port p such that p .. p+size-1 are all free (Ray's head takes its GCS port and the five after it).

    Raises:
        RuntimeError: no such block was found in `attempts` tries.
    """
    for _ in range(attempts):
        base = free_port()
        if base + size > 65535:
            continue
        try:
            for offset in range(size):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError(f"found no block of {size} free ports")


def local_cluster_ports(size_of_ray_block: int = 6) -> dict[str, int]:
    """Keyword arguments of `ClusterSettings` giving a cluster its own free ports."""
    return {
        "control_plane_port": free_port(),
        "control_plane_metrics_port": free_port(),
        "serve_grpc_port": free_port(),
        "serve_http_port": free_port(),
        "ray_port": free_port_block(size_of_ray_block),
        "ray_dashboard_port": free_port(),
        # The Gateway's own gRPC port with direct ingress, and its HTTP port after it.
        "gateway_grpc_port": free_port_block(2),
    }
