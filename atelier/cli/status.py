"""`atelier status`: which components of the local cluster answer their health checks."""

from __future__ import annotations

import argparse

from atelier.cli._cluster import add_json_flag, settings
from atelier.cli._output import emit


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show whether the local cluster is healthy")
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from atelier._processes import health_status
    from atelier.state import ClusterState

    cluster_settings = settings()
    state = ClusterState.load(cluster_settings.home.resolve())
    if state is None:
        emit({"running": False}, "atelier is not running", json_output=args.json)
        return 1
    components = {
        "control_plane": health_status(state.control_plane_address, tls=cluster_settings.tls),
        "inference": health_status(state.serve_grpc_address, tls=cluster_settings.tls),
    }
    healthy = all(value == "SERVING" for value in components.values())
    lines = [f"atelier is {'healthy' if healthy else 'DEGRADED'}:"]
    lines += [
        f"  control plane  {state.control_plane_address}  {components['control_plane']}",
        f"  inference      {state.serve_grpc_address}  {components['inference']}",
    ]
    emit({"running": True, "healthy": healthy, "components": components}, "\n".join(lines), json_output=args.json)
    return 0 if healthy else 1
