"""`atelier db migrate`: apply the control plane's SQL migrations."""

from __future__ import annotations

import argparse

from atelier.cli._cluster import add_json_flag, settings
from atelier.cli._output import CommandError, emit


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("db", help="database maintenance")
    commands = parser.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    migrate = commands.add_parser(
        "migrate", help="apply pending migrations to $ATELIER_DATABASE_URL (or the embedded database)"
    )
    add_json_flag(migrate)
    migrate.set_defaults(run=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    from control_plane.db import apply_migrations, open_pool
    from control_plane.db.embedded import EmbeddedPostgres

    cluster_settings = settings()
    url = cluster_settings.database_url
    if url is None:
        url = EmbeddedPostgres(cluster_settings.home.resolve() / "postgres").start()
    try:
        with open_pool(url, min_size=1, max_size=1) as pool:
            applied = apply_migrations(pool)
    except Exception as exc:  # the driver's message names the server and the failure, not our internals
        raise CommandError(f"migration failed: {exc}") from None
    text = "applied " + ", ".join(applied) if applied else "database is up to date"
    emit({"applied": applied}, text, json_output=args.json)
    return 0
