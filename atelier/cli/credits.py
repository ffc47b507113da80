"""`atelier credits balance|grant|ledger`: an account's credits and the ledger behind them."""

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

    ledger = commands.add_parser("ledger", help="list an account's ledger entries (grants and charges), newest first")
    ledger.add_argument("account_id")
    ledger.add_argument(
        "--limit", type=int, default=50, help=f"most entries to list, 1..{_MAX_LEDGER_ENTRIES} (default 50)"
    )
    add_json_flag(ledger)
    ledger.set_defaults(run=run_ledger)


_MAX_LEDGER_ENTRIES = 10_000


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


def run_ledger(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= _MAX_LEDGER_ENTRIES:
        raise CommandError(f"--limit must be 1..{_MAX_LEDGER_ENTRIES}", "INVALID_ARGUMENT")
    entries: list[control_plane_pb2.LedgerEntry] = []
    page_token = ""
    with connect(args.timeout) as cluster, rpc_errors():
        while len(entries) < args.limit:
            page = cluster.control_plane.ListLedger(
                control_plane_pb2.ListLedgerRequest(
                    account_id=args.account_id, page_size=min(500, args.limit - len(entries)), page_token=page_token
                ),
                metadata=cluster.metadata,
            )
            entries.extend(page.entries)
            page_token = page.next_page_token
            if not page_token:
                break
    rows = [
        {
            "entry_id": entry.entry_id,
            "created_at": entry.created_at.ToJsonString(),
            "delta": entry.delta,
            "kind": entry.kind,
            "reservation_id": entry.reservation_id or None,
            "reason": entry.reason,
        }
        for entry in entries
    ]
    lines = [f"{len(rows)} ledger entries of account {args.account_id}, newest first:"]
    lines += [
        f"  {row['created_at']}  {row['delta']:+d}  {row['kind']:<6}  {row['reason'] or row['reservation_id'] or ''}"
        for row in rows
    ]
    emit(
        {"account_id": args.account_id, "entries": rows, "more": bool(page_token)},
        "\n".join(lines),
        json_output=args.json,
    )
    return 0
