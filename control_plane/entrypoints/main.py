"""`python -m control_plane serve|migrate` (its `main`): the process the launcher and the chart run.

Configuration comes from `ATELIER_*` environment variables (see `config.ENV_VARS`); the
flags below override the most common ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

import psycopg
from psycopg_pool import PoolTimeout

from control_plane.bootstrap import resolve_database_url
from control_plane.config import ENV_VARS, ConfigError, ControlPlaneConfig
from control_plane.db.embedded import EmbeddedPostgresError
from control_plane.db.migrations import apply_migrations
from control_plane.db.pool import open_pool
from control_plane.entrypoints.server import ListenError, serve
from transport.tls import TlsConfig, TlsConfigError

_LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"

# Failures an operator can fix (database down, port taken, directory not writable), reported
# in one line without a traceback.
StartupError = (PoolTimeout, psycopg.OperationalError, EmbeddedPostgresError, ListenError, OSError, ConfigError)


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the command line and runs the command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m control_plane",
        description="The atelier control plane (accounts, credits, content) on PostgreSQL.",
        epilog="Environment: " + ", ".join(sorted(ENV_VARS.values())),
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the gRPC server until SIGTERM/SIGINT")
    serve_parser.add_argument("--listen", help=f"host:port to bind (overrides {ENV_VARS['listen_address']})")
    serve_parser.add_argument(
        "--metrics-port", type=int, help=f"Prometheus port, 0 = off (overrides {ENV_VARS['metrics_port']})"
    )
    commands.add_parser("migrate", help="apply pending database migrations and print them")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level, format=_LOG_FORMAT, stream=sys.stderr)
    try:
        config = ControlPlaneConfig.from_env()
        if getattr(args, "listen", None) is not None:
            config = dataclasses.replace(config, listen_address=args.listen)
        if getattr(args, "metrics_port", None) is not None:
            config = dataclasses.replace(config, metrics_port=args.metrics_port)
        # Checked before anything starts, so a wrong certificate path is a one-line error.
        tls = TlsConfig.from_env()
    except (ConfigError, TlsConfigError) as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2

    try:
        if args.command == "serve":
            return _serve(config, tls)
        return _migrate(config)
    except StartupError as error:
        # Expected operational failures get one line, not a traceback.
        print(f"control plane cannot start: {error}", file=sys.stderr)
        return 1


def _serve(config: ControlPlaneConfig, tls: TlsConfig) -> int:
    serve(config, tls=tls)
    return 0


def _migrate(config: ControlPlaneConfig) -> int:
    pool = open_pool(resolve_database_url(config), min_size=1, max_size=1)
    try:
        applied = apply_migrations(pool)
    finally:
        pool.close()
    for version in applied:
        print(version)
    if not applied:
        print("schema is current", file=sys.stderr)
    return 0
