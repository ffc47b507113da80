"""`atelier gallery visibility|default|public`: who can see an account's images."""

from __future__ import annotations

import argparse

from atelier.cli._cluster import add_json_flag, connect, rpc_errors
from atelier.cli._output import CommandError, emit
from protos.atelier.v1 import common_pb2, control_plane_pb2

_VISIBILITIES = {"private": common_pb2.VISIBILITY_PRIVATE, "public": common_pb2.VISIBILITY_PUBLIC}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("gallery", help="image visibility and the public gallery")
    commands = parser.add_subparsers(dest="gallery_command", required=True, metavar="COMMAND")

    visibility = commands.add_parser("visibility", help="make one image, or all of an account's, public or private")
    visibility.add_argument("visibility", choices=sorted(_VISIBILITIES))
    target = visibility.add_mutually_exclusive_group(required=True)
    target.add_argument("--content", metavar="CONTENT_ID", help="one image")
    target.add_argument("--account", metavar="ACCOUNT_ID", help="all of the account's images")
    visibility.add_argument("--default", action="store_true", help="with --account: also for future images")
    add_json_flag(visibility)
    visibility.set_defaults(run=run_visibility)

    default = commands.add_parser(
        "default", help="make an account's future images public or private; existing ones keep theirs"
    )
    default.add_argument("account", metavar="ACCOUNT_ID")
    default.add_argument("visibility", choices=sorted(_VISIBILITIES))
    add_json_flag(default)
    default.set_defaults(run=run_default)

    public = commands.add_parser("public", help="list the public gallery, newest first")
    public.add_argument("--limit", type=int, default=20, metavar="N", help="1..100 (default 20)")
    add_json_flag(public)
    public.set_defaults(run=run_public)


def run_visibility(args: argparse.Namespace) -> int:
    if args.default and not args.account:
        raise CommandError("--default applies only with --account", "INVALID_ARGUMENT")
    request = control_plane_pb2.SetVisibilityRequest(
        content_id=args.content or "",
        account_id=args.account or "",
        visibility=_VISIBILITIES[args.visibility],
        apply_to_default=args.default,
    )
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.SetVisibility(request, metadata=cluster.metadata)
    result = {"updated_count": response.updated_count, "visibility": args.visibility}
    emit(result, f"{response.updated_count} item(s) made {args.visibility}", json_output=args.json)
    return 0


def run_default(args: argparse.Namespace) -> int:
    request = control_plane_pb2.SetDefaultVisibilityRequest(
        account_id=args.account, visibility=_VISIBILITIES[args.visibility]
    )
    with connect() as cluster, rpc_errors():
        cluster.control_plane.SetDefaultVisibility(request, metadata=cluster.metadata)
    result = {"account_id": args.account, "default_visibility": args.visibility}
    emit(result, f"new images of {args.account} will be {args.visibility}", json_output=args.json)
    return 0


def run_public(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 100:
        raise CommandError("--limit must be 1..100", "INVALID_ARGUMENT")
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.ListPublicGallery(
            control_plane_pb2.ListPublicGalleryRequest(page_size=args.limit), metadata=cluster.metadata
        )
    items = [
        {"content_id": c.content_id, "account_id": c.account_id, "created_at": c.created_at.ToJsonString()}
        for c in response.contents
    ]
    lines = [f"{i['content_id']}  {i['created_at']}  account {i['account_id']}" for i in items]
    emit({"contents": items}, "\n".join(lines) or "the public gallery is empty", json_output=args.json)
    return 0
