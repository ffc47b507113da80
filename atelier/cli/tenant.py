"""`atelier tenant identity-provider ...`: the tenant's OIDC provider for end users' ID tokens.

Calls `SetIdentityProvider` / `GetIdentityProvider` with an admin key, so it configures that key's
own tenant: the operator key's (this home's `operator.key`) unless `--key-file` names another
tenant's admin key. Without settings it shows the provider in force.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from atelier.cli._cluster import add_json_flag, connect, rpc_errors
from atelier.cli._output import CommandError, emit
from protos.atelier.v1 import control_plane_pb2

_URL_SCHEMES = ("https://", "http://", "file://")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tenant", help="tenant settings")
    commands = parser.add_subparsers(dest="tenant_command", required=True, metavar="COMMAND")

    provider = commands.add_parser(
        "identity-provider",
        help="verify end users' OIDC ID tokens (x-atelier-user-token) with this issuer and key set; "
        "without settings, show the provider in force",
    )
    provider.add_argument("--issuer", help="the tokens' `iss`, e.g. https://accounts.example.com")
    provider.add_argument("--audience", help="a value the tokens' `aud` must hold (the client id)")
    provider.add_argument(
        "--jwks",
        metavar="FILE|URL",
        help="JSON Web Key Set: a local JSON file (sent inline), an https:// URL, or a file:// URL read on the "
        "control plane's host (operator's tenant only)",
    )
    provider.add_argument("--account-claim", default="sub", help="claim naming the atelier account (default sub)")
    provider.add_argument("--require", action="store_true", help="accept an acting account only with a token")
    provider.add_argument("--off", action="store_true", help="remove the tenant's identity provider")
    provider.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help="an admin key of the tenant to configure (default: this home's operator key, the operator's tenant)",
    )
    add_json_flag(provider)
    provider.set_defaults(run=run_identity_provider)


def run_identity_provider(args: argparse.Namespace) -> int:
    settings = [flag for flag in ("issuer", "audience", "jwks") if getattr(args, flag)]
    request: control_plane_pb2.SetIdentityProviderRequest | None = None
    if args.off:
        if settings or args.require:
            raise CommandError("--off takes no other settings", "INVALID_ARGUMENT")
        request = control_plane_pb2.SetIdentityProviderRequest()
    elif settings or args.require:
        missing = [flag for flag in ("issuer", "audience", "jwks") if not getattr(args, flag)]
        if missing:
            raise CommandError(f"give --{', --'.join(missing)} (or --off)", "INVALID_ARGUMENT")
        request = control_plane_pb2.SetIdentityProviderRequest(
            provider=control_plane_pb2.IdentityProvider(
                issuer=args.issuer,
                audience=args.audience,
                jwks=args.jwks if args.jwks.startswith(_URL_SCHEMES) else _read(args.jwks),
                account_claim=args.account_claim,
                require_user_token=args.require,
            )
        )
    with connect(args.timeout) as cluster, rpc_errors():
        metadata = cluster.metadata if args.key_file is None else (("authorization", f"Bearer {_key(args.key_file)}"),)
        if request is None:
            found = cluster.control_plane.GetIdentityProvider(
                control_plane_pb2.GetIdentityProviderRequest(), metadata=metadata
            )
            in_force = found.provider if found.HasField("provider") else None
        else:
            answer = cluster.control_plane.SetIdentityProvider(request, metadata=metadata)
            in_force = answer.provider if answer.HasField("provider") else None
    result: dict[str, Any] = {
        "issuer": in_force.issuer if in_force else None,
        "audience": in_force.audience if in_force else None,
        "account_claim": in_force.account_claim if in_force else None,
        "required": in_force.require_user_token if in_force else False,
    }
    required = ", required" if in_force and in_force.require_user_token else ""
    summary = "no identity provider"
    if in_force:
        summary = f"ID tokens of {in_force.issuer} for {in_force.audience}{required}"
    emit(result, summary, json_output=args.json)
    return 0


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CommandError(f"--jwks {path}: {exc.strerror}", "INVALID_ARGUMENT") from None


def _key(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise CommandError(f"--key-file {path}: {exc.strerror}", "INVALID_ARGUMENT") from None
