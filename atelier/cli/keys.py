"""`atelier keys rotate-master`: re-wrap every account's data key under a new master key."""

from __future__ import annotations

import argparse

from atelier.cli._cluster import add_json_flag, connect, rpc_errors
from atelier.cli._output import emit
from protos.atelier.v1 import control_plane_pb2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="encryption keys")
    commands = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    rotate = commands.add_parser(
        "rotate-master",
        help="re-wrap all data keys under a new master key (written over the key file); content is untouched",
    )
    add_json_flag(rotate)
    rotate.set_defaults(run=run_rotate_master)


def run_rotate_master(args: argparse.Namespace) -> int:
    with connect() as cluster, rpc_errors():
        response = cluster.control_plane.RotateMasterKey(
            control_plane_pb2.RotateMasterKeyRequest(), metadata=cluster.metadata
        )
    result = {
        "previous_key_id": response.previous_key_id,
        "key_id": response.key_id,
        "rewrapped_keys": response.rewrapped_keys,
    }
    text = f"master key {response.previous_key_id} -> {response.key_id}: {response.rewrapped_keys} data keys re-wrapped"
    emit(result, text, json_output=args.json)
    return 0
