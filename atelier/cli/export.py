"""`atelier export training|removals`: training exports (run here) and their removal manifests.

`export training -o DIR` writes every item eligible for training to `DIR/<export id>/` as
Parquet with a `_manifest.json` (`-o s3://bucket/prefix`: to `prefix/<export id>/` in that
bucket, with the `AWS_*` settings); it runs against the database like the sweep. `export removals
EXPORT_ID` asks the running control plane which items of an export must be deleted since
(`--since` the cursor a previous call printed).
"""

from __future__ import annotations

import argparse

from atelier.cli._cluster import add_json_flag, connect, rpc_errors
from atelier.cli._jobs import job_deps, parse_as_of
from atelier.cli._output import CommandError, emit
from protos.atelier.v1 import training_pb2

_PAGE_SIZE = 10_000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="training exports and their removal manifests")
    commands = parser.add_subparsers(dest="export_command", required=True, metavar="COMMAND")

    training = commands.add_parser("training", help="export every item eligible for training to Parquet")
    training.add_argument(
        "-o", "--output", required=True, metavar="DIR|URL", help="parent directory, or s3://bucket/prefix"
    )
    training.add_argument("--no-images", action="store_true", help="metadata only: leave the image column empty")
    training.add_argument("--as-of", metavar="TIMESTAMP", help="judge eligibility at this ISO 8601 time")
    add_json_flag(training)
    training.set_defaults(run=run_training)

    removals = commands.add_parser("removals", help="items of an export to delete from training data")
    removals.add_argument("export_id")
    removals.add_argument("--since", metavar="CURSOR", default="", help="only removals after this cursor")
    add_json_flag(removals)
    removals.set_defaults(run=run_removals)


def run_training(args: argparse.Namespace) -> int:
    from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
    from control_plane.adapters.export_targets import open_export_target
    from control_plane.audit import SYSTEM
    from control_plane.training_exports import ExportMetrics, create_training_export

    try:
        # Checked before anything is recorded, so a bad -o leaves no half-made export behind.
        target = open_export_target(args.output)
    except OSError as exc:
        raise CommandError(f"-o {args.output}: cannot create the directory ({exc.strerror})") from None
    except ValueError as exc:
        raise CommandError(f"-o {args.output}: {exc}") from None
    with job_deps(parse_as_of(args.as_of)) as (_, deps):
        export = create_training_export(
            deps.pool,
            EncryptedBlobStore(deps.blobs),
            deps.keys,
            deps.policies,
            output_dir=target,
            actor=SYSTEM,
            now=deps.clock.now(),
            include_images=not args.no_images,
            metrics=ExportMetrics.for_registry(deps.registry),
        )
    result = {
        "export_id": str(export.export_id),
        "location": export.location,
        # Kept for scripts written before exports could go to an object store.
        **({"directory": export.location} if "://" not in export.location else {}),
        "items": export.item_count,
        "files": [f.name for f in export.files],
        "seconds": round(export.seconds, 3),
    }
    emit(
        result,
        f"exported {export.item_count} items to {export.location} ({len(export.files)} files, "
        f"{export.seconds:.2f} s); removals: atelier export removals {export.export_id}",
        json_output=args.json,
    )
    return 0


def run_removals(args: argparse.Namespace) -> int:
    rows: list[dict[str, str]] = []
    cursor = args.since
    with connect(args.timeout) as cluster, rpc_errors():
        while True:
            page = cluster.training.ListRemovals(
                training_pb2.ListRemovalsRequest(export_id=args.export_id, page_token=cursor, page_size=_PAGE_SIZE),
                metadata=cluster.metadata,
            )
            cursor = page.next_page_token
            rows.extend(
                {
                    "item_id": r.item_id,
                    "reason": training_pb2.IneligibilityReason.Name(r.reason)
                    .removeprefix("INELIGIBILITY_REASON_")
                    .lower(),
                    "removed_at": r.removed_at.ToJsonString(),
                }
                for r in page.removals
            )
            if len(page.removals) < _PAGE_SIZE:
                break
    lines = [f"{r['item_id']}  {r['reason']:17} {r['removed_at']}" for r in rows]
    lines.append(f"next: atelier export removals {args.export_id} --since {cursor}")
    emit({"removals": rows, "next_cursor": cursor}, "\n".join(lines), json_output=args.json)
    return 0
