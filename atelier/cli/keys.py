"""`atelier keys list|create|rotate|revoke|rotate-master`: service API keys and the master key.

Secrets are printed once, when a key is created or rotated: the control plane keeps only a
hash. Rotating the key this home's commands use (`operator.key`) writes the new secret
there, so the next command keeps working.
"""

from __future__ import annotations

import argparse
from typing import Any

from atelier.cli._cluster import add_json_flag, connect, rpc_errors
from atelier.cli._output import CommandError, emit
from atelier.state import save_operator_key
from protos.atelier.v1 import control_plane_pb2

_SCOPES = {
    name.removeprefix("SCOPE_").lower().replace("_", "-"): number
    for name, number in control_plane_pb2.Scope.items()
    if number != control_plane_pb2.SCOPE_UNSPECIFIED
}
_MAX_GRACE_S = 86_400


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="service API keys and encryption keys")
    commands = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list the tenant's API keys, revoked ones included")
    add_json_flag(listing)
    listing.set_defaults(run=run_list)

    create = commands.add_parser("create", help="create an API key; its secret is printed once")
    create.add_argument("--name", required=True, help="label, 1..100 characters")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        choices=sorted(_SCOPES),
        help="a scope the key holds; repeat for several ('admin' implies all)",
    )
    add_json_flag(create)
    create.set_defaults(run=run_create)

    rotate = commands.add_parser(
        "rotate", help="issue a new secret for a key (same name and scopes); the old one stops after --grace"
    )
    rotate.add_argument("key_id", help="the key to replace, e.g. ak_0123456789abcdef")
    rotate.add_argument(
        "--grace",
        type=int,
        default=0,
        metavar="SECONDS",
        help=f"how long the old secret keeps working, 0..{_MAX_GRACE_S} (default 0: it stops at once)",
    )
    add_json_flag(rotate)
    rotate.set_defaults(run=run_rotate)

    revoke = commands.add_parser("revoke", help="revoke a key at once (revoking twice is harmless)")
    revoke.add_argument("key_id", help="the key to revoke")
    add_json_flag(revoke)
    revoke.set_defaults(run=run_revoke)

    rotate_master = commands.add_parser(
        "rotate-master",
        help="re-wrap all data keys under a new master key (written over the key file); content is untouched",
    )
    add_json_flag(rotate_master)
    rotate_master.set_defaults(run=run_rotate_master)


def run_list(args: argparse.Namespace) -> int:
    keys: list[control_plane_pb2.ApiKey] = []
    with connect(args.timeout) as cluster, rpc_errors():
        token = ""
        while True:
            page = cluster.control_plane.ListApiKeys(
                control_plane_pb2.ListApiKeysRequest(page_token=token), metadata=cluster.metadata
            )
            keys.extend(page.keys)
            token = page.next_page_token
            if not token:
                break
    rows = [_key_dict(key) for key in keys]
    lines = [f"{'KEY ID':20} {'NAME':20} {'SCOPES':28} STATUS"]
    lines += [f"{r['key_id']:20} {r['name'][:20]:20} {','.join(r['scopes']):28} {_status(r)}" for r in rows]
    emit({"keys": rows}, "\n".join(lines), json_output=args.json)
    return 0


def run_create(args: argparse.Namespace) -> int:
    request = control_plane_pb2.CreateApiKeyRequest(name=args.name, scopes=[_SCOPES[s] for s in args.scopes])
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.CreateApiKey(request, metadata=cluster.metadata)
    key = _key_dict(response.key)
    text = (
        f"created key {key['key_id']} ({key['name']}: {', '.join(key['scopes'])})\n"
        f"secret: {response.secret}\n"
        "this secret is shown only now: store it where the service reads it"
    )
    emit({"key": key, "secret": response.secret}, text, json_output=args.json)
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    if not 0 <= args.grace <= _MAX_GRACE_S:
        raise CommandError(f"--grace must be 0..{_MAX_GRACE_S} seconds", "INVALID_ARGUMENT")
    request = control_plane_pb2.RotateApiKeyRequest(key_id=args.key_id, grace_seconds=args.grace)
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.RotateApiKey(request, metadata=cluster.metadata)
    # The key this home's commands use was replaced: keep them working with the new secret.
    operator_key_updated = cluster.key_id == response.previous.key_id
    if operator_key_updated:
        save_operator_key(cluster.home, response.secret)
    key, previous = _key_dict(response.key), _key_dict(response.previous)
    lines = [
        f"rotated {previous['key_id']} -> {key['key_id']} ({key['name']}: {', '.join(key['scopes'])})",
        f"secret: {response.secret}",
        "this secret is shown only now: store it where the service reads it",
        f"the old secret stops working at {previous['revoked_at']}",
    ]
    if operator_key_updated:
        lines.append(f"this home's operator key was replaced: {cluster.home / 'operator.key'} holds the new secret")
    result = {
        "key": key,
        "secret": response.secret,
        "previous": previous,
        "operator_key_updated": operator_key_updated,
    }
    emit(result, "\n".join(lines), json_output=args.json)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    request = control_plane_pb2.RevokeApiKeyRequest(key_id=args.key_id)
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.RevokeApiKey(request, metadata=cluster.metadata)
    key = _key_dict(response.key)
    emit({"key": key}, f"revoked {key['key_id']} ({key['name']}) at {key['revoked_at']}", json_output=args.json)
    return 0


def run_rotate_master(args: argparse.Namespace) -> int:
    with connect(args.timeout) as cluster, rpc_errors():
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


def _key_dict(key: control_plane_pb2.ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "tenant_id": key.tenant_id,
        "name": key.name,
        "scopes": [
            control_plane_pb2.Scope.Name(s).removeprefix("SCOPE_").lower().replace("_", "-") for s in key.scopes
        ],
        "created_at": key.created_at.ToJsonString(),
        "revoked_at": key.revoked_at.ToJsonString() if key.HasField("revoked_at") else None,
        "replaced_by_key_id": key.replaced_by_key_id or None,
        "active": key.active,
    }


def _status(key: dict[str, Any]) -> str:
    if key["revoked_at"] is None:
        return "active"
    successor = f", replaced by {key['replaced_by_key_id']}" if key["replaced_by_key_id"] else ""
    if key["active"]:
        return f"active until {key['revoked_at']}{successor}"
    return f"revoked {key['revoked_at']}{successor}"
