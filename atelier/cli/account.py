"""`atelier account create|show`: accounts of the operator's tenant."""

from __future__ import annotations

import argparse
import datetime

from atelier.cli._cluster import add_json_flag, connect, rpc_errors
from atelier.cli._output import CommandError, emit
from protos.atelier.v1 import control_plane_pb2

_TIERS = {"free": control_plane_pb2.TIER_FREE, "premium": control_plane_pb2.TIER_PREMIUM}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("account", help="create and inspect accounts")
    commands = parser.add_subparsers(dest="account_command", required=True, metavar="COMMAND")

    create = commands.add_parser("create", help="create an account")
    create.add_argument("--tier", choices=sorted(_TIERS), default="free", help="billing tier (default free)")
    create.add_argument("--credits", type=int, default=0, metavar="N", help="credits granted at creation")
    age = create.add_mutually_exclusive_group(required=True)
    age.add_argument("--birth-date", metavar="YYYY-MM-DD", help="the user's date of birth (age gate)")
    age.add_argument("--age-attested", type=int, metavar="YEARS", help="an age the caller attests instead")
    add_json_flag(create)
    create.set_defaults(run=run_create)

    show = commands.add_parser("show", help="show an account")
    show.add_argument("account_id")
    add_json_flag(show)
    show.set_defaults(run=run_show)


def run_create(args: argparse.Namespace) -> int:
    if args.credits < 0:
        raise CommandError("--credits must be >= 0", "INVALID_ARGUMENT")
    if args.birth_date is not None:
        try:
            datetime.date.fromisoformat(args.birth_date)
        except ValueError:
            raise CommandError("--birth-date must be a date like 1990-04-01", "INVALID_ARGUMENT") from None
    request = control_plane_pb2.CreateAccountRequest(
        tier=_TIERS[args.tier],
        birth_date=args.birth_date or "",
        age_attested=args.age_attested or 0,
        initial_credits=args.credits,
    )
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.CreateAccount(request, metadata=cluster.metadata)
    account = response.account
    result = {
        "account_id": account.account_id,
        "tier": args.tier,
        "credits_available": response.balance.available,
    }
    emit(
        result,
        f"created account {account.account_id} ({args.tier}, {response.balance.available} credits)",
        json_output=args.json,
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.GetAccount(
            control_plane_pb2.GetAccountRequest(account_id=args.account_id), metadata=cluster.metadata
        )
    account = response.account
    result = {
        "account_id": account.account_id,
        "tenant_id": account.tenant_id,
        "tier": control_plane_pb2.Tier.Name(account.tier).removeprefix("TIER_").lower(),
        "status": control_plane_pb2.AccountStatus.Name(account.status).removeprefix("ACCOUNT_STATUS_").lower(),
        "created_at": account.created_at.ToJsonString(),
    }
    emit(result, "\n".join(f"{key:12} {value}" for key, value in result.items()), json_output=args.json)
    return 0
