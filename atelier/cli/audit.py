"""`atelier audit --account ID`: the audit trail about one account, newest first."""

from __future__ import annotations

import argparse
import json

from atelier.cli._cluster import add_json_flag, connect, rpc_errors
from atelier.cli._output import CommandError, emit
from protos.atelier.v1 import control_plane_pb2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("audit", help="show the audit trail about an account")
    parser.add_argument("--account", required=True, metavar="ACCOUNT_ID")
    parser.add_argument("--limit", type=int, default=100, metavar="N", help="most entries, 1..1000 (default 100)")
    add_json_flag(parser)
    parser.set_defaults(run=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise CommandError("--limit must be 1..1000", "INVALID_ARGUMENT")
    request = control_plane_pb2.ListAuditEntriesRequest(account_id=args.account, page_size=args.limit)
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.ListAuditEntries(request, metadata=cluster.metadata)
    entries = [
        {
            "id": e.id,
            "at": e.at.ToJsonString(),
            "actor_key_id": e.actor_key_id or None,
            "action": e.action,
            "target_type": e.target_type,
            "target_id": e.target_id,
            "details": json.loads(e.details_json or "{}"),
        }
        for e in response.entries
    ]
    lines = [
        f"{e['at']}  {e['action']:24} {e['target_type']} {e['target_id']}  by {e['actor_key_id']}" for e in entries
    ]
    emit({"entries": entries}, "\n".join(lines) or "no entries", json_output=args.json)
    return 0
