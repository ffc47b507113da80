"""`atelier down`: stop the local cluster; data stays under $ATELIER_HOME."""

from __future__ import annotations

import argparse

from atelier.cli._cluster import settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("down", help="stop the local cluster (its data stays)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from atelier.launcher import LocalCluster

    LocalCluster(settings()).down()
    print("atelier is down")
    return 0
