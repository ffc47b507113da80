"""`atelier status`: the database, control plane, Ray, the Serve application and every model pool."""

from __future__ import annotations

import argparse

from atelier.cli._cluster import add_json_flag, settings
from atelier.cli._output import emit


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show whether each part of the local cluster is healthy; exit 1 when any is not",
        description="Checks every component at once, each within a few seconds, and exits non-zero "
        "when any is unhealthy (or nothing runs); `atelier up` starts what is missing.",
    )
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from atelier.health import check_cluster
    from atelier.state import ClusterState

    cluster_settings = settings()
    state = ClusterState.load(cluster_settings.home.resolve())
    if state is None:
        emit({"running": False, "healthy": False}, "atelier is not running", json_output=args.json)
        return 1
    health = check_cluster(cluster_settings, state)

    def mark(ok: bool) -> str:
        return "ok  " if ok else "DOWN"

    lines = [f"atelier is {'healthy' if health.healthy else 'UNHEALTHY'}:"]
    lines += [
        f"  {mark(check.ok)} {name:<14} {where:<22} {check.detail}"
        for name, where, check in (
            ("database", "", health.database),
            ("control plane", state.control_plane_address, health.control_plane),
            ("ray", state.ray_address, health.ray),
            ("serve", state.serve_grpc_address, health.serve),
        )
    ]
    lines += [
        f"  {mark(pool.ok)} pool {pool.name:<9} {f'{pool.running}/{pool.target} replicas':<22} "
        f"models: {', '.join(pool.models) or '?'}"
        for pool in health.pools
    ]
    emit({"running": True, **health.to_json()}, "\n".join(lines), json_output=args.json)
    return 0 if health.healthy else 1
