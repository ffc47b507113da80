"""`atelier dsr export|erase|list`: data-subject requests (export archives, erasure, deadlines)."""

from __future__ import annotations

import argparse
import datetime
import io
import os
import zipfile
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from atelier.cli._cluster import add_json_flag, add_timeout_flag, connect, rpc_errors
from atelier.cli._output import CommandError, emit
from protos.atelier.v1 import control_plane_pb2

# Exporting or erasing an account with much content reads or deletes every blob of it.
_LONG_CALL_TIMEOUT_S = 300.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dsr", help="data-subject requests: export, erasure, deadlines")
    commands = parser.add_subparsers(dest="dsr_command", required=True, metavar="COMMAND")

    export = commands.add_parser("export", help="export everything held about an account into a directory")
    export.add_argument("account_id")
    export.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="directory to unpack into")
    add_json_flag(export)
    add_timeout_flag(export, _LONG_CALL_TIMEOUT_S)
    export.set_defaults(run=run_export)

    erase = commands.add_parser("erase", help="erase an account (its key is destroyed) or one of its items")
    erase.add_argument("account_id")
    erase.add_argument("--content", metavar="CONTENT_ID", default="", help="erase only this item")
    add_json_flag(erase)
    add_timeout_flag(erase, _LONG_CALL_TIMEOUT_S)
    erase.set_defaults(run=run_erase)

    listing = commands.add_parser("list", help="list requests, earliest due date first")
    listing.add_argument("--overdue", action="store_true", help="only requests still open past their due date")
    listing.add_argument("--as-of", metavar="TIMESTAMP", help="judge overdue at this ISO 8601 time (default now)")
    listing.add_argument("--account", metavar="ACCOUNT_ID", default="", help="only this account's requests")
    add_json_flag(listing)
    listing.set_defaults(run=run_list)


def request_result(request: control_plane_pb2.DsrRequest) -> dict[str, object]:
    """A request as a JSON-ready dict."""
    return {
        "dsr_id": request.dsr_id,
        "account_id": request.account_id,
        "kind": control_plane_pb2.DsrKind.Name(request.kind).removeprefix("DSR_KIND_").lower(),
        "state": control_plane_pb2.DsrState.Name(request.state).removeprefix("DSR_STATE_").lower(),
        "received_at": request.received_at.ToJsonString(),
        "due_at": request.due_at.ToJsonString(),
        "completed_at": request.completed_at.ToJsonString() if request.HasField("completed_at") else None,
        "content_id": request.content_id or None,
    }


def run_export(args: argparse.Namespace) -> int:
    output: Path = args.output
    if output.exists() and any(output.iterdir()):
        raise CommandError(f"{output} is not empty: choose a new or empty directory", "INVALID_ARGUMENT")
    with connect(args.timeout) as cluster, rpc_errors():
        requested = cluster.control_plane.RequestExport(
            control_plane_pb2.RequestExportRequest(account_id=args.account_id), metadata=cluster.metadata
        ).request
        archive = cluster.control_plane.GetExportArchive(
            control_plane_pb2.GetExportArchiveRequest(dsr_id=requested.dsr_id), metadata=cluster.metadata
        ).archive
    with zipfile.ZipFile(io.BytesIO(archive)) as unpacked:
        names = unpacked.namelist()
        # Names come from our own server, but never write outside the directory.
        if any(name.startswith("/") or ".." in Path(name).parts for name in names):
            raise CommandError("the archive holds an unsafe path; nothing was written")
        _extract_private(unpacked, output)
    images = sum(1 for name in names if name.startswith("images/"))
    result = {**request_result(requested), "directory": str(output), "files": sorted(names), "images": images}
    emit(
        result,
        f"exported account {args.account_id} to {output} ({len(names)} files, {images} images)",
        json_output=args.json,
    )
    return 0


def _extract_private(archive: zipfile.ZipFile, output: Path) -> None:
    """Unpacks `archive` into `output` readable by this user only: a person's data, so every
    directory is 0700 and every file 0600, whatever the umask."""
    _private_directory(output)
    for info in archive.infolist():
        target = output / info.filename
        if info.is_dir():
            _private_directory(target)
            continue
        _private_directory(target.parent)
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(archive.read(info))


def _private_directory(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode is masked by the umask, and an existing empty directory keeps its own


def run_erase(args: argparse.Namespace) -> int:
    request = control_plane_pb2.RequestErasureRequest(account_id=args.account_id, content_id=args.content)
    with connect(args.timeout) as cluster, rpc_errors():
        erased = cluster.control_plane.RequestErasure(request, metadata=cluster.metadata).request
    what = f"content {args.content}" if args.content else f"account {args.account_id}"
    emit(request_result(erased), f"erased {what} (request {erased.dsr_id})", json_output=args.json)
    return 0


def run_list(args: argparse.Namespace) -> int:
    request = control_plane_pb2.ListDsrRequestsRequest(overdue_only=args.overdue, account_id=args.account)
    if args.as_of:
        request.as_of.CopyFrom(_timestamp(args.as_of))
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.ListDsrRequests(request, metadata=cluster.metadata)
    rows = [request_result(r) for r in response.requests]
    lines = [f"{r['dsr_id']}  {r['kind']:8} {r['state']:11} due {r['due_at']}  account {r['account_id']}" for r in rows]
    emit({"requests": rows}, "\n".join(lines) or "no requests", json_output=args.json)
    return 0


def _timestamp(text: str) -> Timestamp:
    try:
        instant = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError("--as-of must be an ISO 8601 time like 2026-05-01T12:00:00Z", "INVALID_ARGUMENT") from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=datetime.UTC)
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp
