"""`atelier up`: start a local cluster on embedded defaults and print its addresses."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from atelier.cli._cluster import add_json_flag, settings
from atelier.cli._output import CommandError, emit


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start PostgreSQL, the control plane, Ray and the Serve app; return once all are healthy",
        description="Start a local atelier cluster. State lives in $ATELIER_HOME (default ./.atelier).",
    )
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from atelier._processes import StartError
    from atelier.launcher import LocalCluster

    cluster_settings = settings()
    progress = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        state = LocalCluster(cluster_settings, log=progress).up()
    except StartError as exc:
        raise CommandError(str(exc)) from None
    if state.serve_proxy_grpc_address is None:
        inference = [f"  inference gRPC (Serve)   {state.serve_grpc_address}"]
    else:
        inference = [
            f"  inference gRPC (direct)  {state.serve_grpc_address}",
            f"  Serve gRPC proxy         {state.serve_proxy_grpc_address}",
        ]
    text = "\n".join(
        [
            "atelier is up:",
            *inference,
            f"  control plane gRPC       {state.control_plane_address}",
            f"  control plane metrics    {state.control_plane_metrics_url}",
            f"  Ray                      {state.ray_address}",
            f"  inference metrics        {state.ray_metrics_url}",
            f"  Ray dashboard            {state.ray_dashboard_url}",
            f"  demo account             {state.demo_account_id}",
            f"  operator key             {cluster_settings.home.resolve() / 'operator.key'}",
            "Try: atelier generate 'a lighthouse at dusk' -o out.png",
        ]
    )
    emit(asdict(state), text, json_output=args.json)
    return 0
