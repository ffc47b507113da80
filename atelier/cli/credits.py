"""`atelier credits balance|grant`: an account's credits."""

from __future__ import annotations

import argparse

from atelier.cli._cluster import add_json_flag, connect, rpc_errors
from atelier.cli._output import CommandError, emit
from protos.atelier.v1 import control_plane_pb2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("credits", help="show and grant credits")
    commands = parser.add_subparsers(dest="credits_command", required=True, metavar="COMMAND")

    balance = commands.add_parser("balance", help="show an account's balance")
    balance.add_argument("account_id")
    add_json_flag(balance)
    balance.set_defaults(run=run_balance)

    grant = commands.add_parser("grant", help="add credits to an account")
    grant.add_argument("account_id")
    grant.add_argument("amount", type=int)
    grant.add_argument("--reason", default="", help="recorded in the ledger and audit log")
    add_json_flag(grant)
    grant.set_defaults(run=run_grant)


def _balance_result(balance: control_plane_pb2.Balance) -> tuple[dict[str, object], str]:
    result = {
        "account_id": balance.account_id,
        "total": balance.total,
        "held": balance.held,
        "available": balance.available,
    }
    text = f"{balance.available} credits available ({balance.total} total, {balance.held} held)"
    return result, text


def run_balance(args: argparse.Namespace) -> int:
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.GetBalance(
            control_plane_pb2.GetBalanceRequest(account_id=args.account_id), metadata=cluster.metadata
        )
    emit(*_balance_result(response.balance), json_output=args.json)
    return 0


def run_grant(args: argparse.Namespace) -> int:
    if args.amount < 1:
        raise CommandError("amount must be >= 1", "INVALID_ARGUMENT")
    request = control_plane_pb2.GrantCreditsRequest(account_id=args.account_id, amount=args.amount, reason=args.reason)
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.GrantCredits(request, metadata=cluster.metadata)
    emit(*_balance_result(response.balance), json_output=args.json)
    return 0
