"""`atelier tenant identity-provider TENANT ...`: the tenant's OIDC provider for end users' ID tokens.

Runs against the database directly (like `sweep` and `export`): configuring who may prove an
end user's identity is an operator's change, not a service key's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from atelier.cli._cluster import add_json_flag
from atelier.cli._jobs import job_deps
from atelier.cli._output import CommandError, emit


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tenant", help="tenant settings")
    commands = parser.add_subparsers(dest="tenant_command", required=True, metavar="COMMAND")

    provider = commands.add_parser(
        "identity-provider",
        help="verify end users' OIDC ID tokens (x-atelier-user-token) with this issuer and key set",
    )
    provider.add_argument("tenant", metavar="TENANT", help="tenant name ('default' is the launcher's)")
    provider.add_argument("--issuer", help="the tokens' `iss`, e.g. https://accounts.example.com")
    provider.add_argument("--audience", help="a value the tokens' `aud` must hold (the client id)")
    provider.add_argument("--jwks", metavar="FILE|URL", help="JSON Web Key Set: a local JSON file, or an https URL")
    provider.add_argument("--account-claim", default="sub", help="claim naming the atelier account (default sub)")
    provider.add_argument("--require", action="store_true", help="accept an acting account only with a token")
    provider.add_argument("--off", action="store_true", help="remove the tenant's identity provider")
    add_json_flag(provider)
    provider.set_defaults(run=run_identity_provider)


def run_identity_provider(args: argparse.Namespace) -> int:
    from control_plane import tenants
    from control_plane.audit import SYSTEM
    from control_plane.config import ConfigError
    from control_plane.errors import NotFound
    from control_plane.user_tokens import IdentityProvider

    provider: IdentityProvider | None = None
    if not args.off:
        missing = [flag for flag in ("issuer", "audience", "jwks") if not getattr(args, flag)]
        if missing:
            raise CommandError(f"give --{', --'.join(missing)} (or --off)", "INVALID_ARGUMENT")
        jwks = args.jwks if args.jwks.startswith(("https://", "http://", "file://")) else _read(args.jwks)
        try:
            provider = IdentityProvider(args.issuer, args.audience, jwks, args.account_claim, args.require)
        except ConfigError as exc:
            raise CommandError(f"--{exc.setting.replace('_', '-')} {exc.detail}", "INVALID_ARGUMENT") from None
    with job_deps(None) as (_, deps), deps.pool.connection() as conn:
        try:
            tenant = tenants.get_tenant_by_name(conn, args.tenant)
            tenants.set_identity_provider(
                conn, tenant_id=tenant.tenant_id, provider=provider, actor=SYSTEM, now=deps.clock.now()
            )
        except NotFound as exc:
            raise CommandError(str(exc), "NOT_FOUND") from None
    result = {
        "tenant": args.tenant,
        "issuer": provider.issuer if provider else None,
        "audience": provider.audience if provider else None,
        "required": provider.required if provider else False,
    }
    summary = f"tenant {args.tenant}: " + (
        f"ID tokens of {provider.issuer} for {provider.audience}" + (", required" if provider.required else "")
        if provider
        else "no identity provider"
    )
    emit(result, summary, json_output=args.json)
    return 0


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CommandError(f"--jwks {path}: {exc.strerror}", "INVALID_ARGUMENT") from None
