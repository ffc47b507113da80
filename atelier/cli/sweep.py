"""`atelier sweep [--once] [--as-of TIMESTAMP] [--json]`: the retention sweep, run here.

Deletes what the policy profiles say must go (content rows with their blobs, expired credit
reservations, old usage aggregates) in bounded, crash-safe batches; safe beside other sweepers.
"""

from __future__ import annotations

import argparse
import threading

from atelier.cli._cluster import add_json_flag
from atelier.cli._jobs import job_deps, parse_as_of
from atelier.cli._output import CommandError, emit


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sweep", help="delete content and data past its retention deadline")
    parser.add_argument("--once", action="store_true", help="one pass, then exit (default: every interval)")
    parser.add_argument(
        "--as-of", metavar="TIMESTAMP", help="sweep as if it were this ISO 8601 time (default now); implies --once"
    )
    parser.add_argument("--batch-size", type=int, default=1000, metavar="N", help="items per transaction (1..100000)")
    add_json_flag(parser)
    parser.set_defaults(run=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    from control_plane.errors import InvalidArgument
    from control_plane.sweeper import SweepMetrics, run_sweep

    as_of = parse_as_of(args.as_of)
    with job_deps(as_of) as (config, deps):
        stop = threading.Event()
        while True:
            try:
                report = run_sweep(
                    deps.pool,
                    deps.blobs,
                    deps.policies,
                    now=deps.clock.now(),
                    batch_size=args.batch_size,
                    metrics=SweepMetrics.for_registry(deps.registry),
                    stop=stop,
                )
            except InvalidArgument as exc:
                raise CommandError(f"--batch-size {exc.message.split(': ', 1)[-1]}", "INVALID_ARGUMENT") from None
            counts = ", ".join(f"{reason.value} {count}" for reason, count in report.deleted.items() if count)
            emit(
                report.as_dict(),
                f"swept as of {report.as_of.isoformat()}: {report.total} deleted ({counts or 'nothing due'}), "
                f"{report.removals} removals recorded, {report.seconds:.2f} s",
                json_output=args.json,
            )
            if args.once or as_of is not None:
                return 0
            if stop.wait(max(config.sweep_interval_s, 1)):
                return 0
