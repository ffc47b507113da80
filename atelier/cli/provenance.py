"""`atelier provenance verify FILE`: what an image's C2PA manifest and invisible watermark say."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from atelier.cli._cluster import add_json_flag, connect, rpc_errors
from atelier.cli._output import CommandError, emit
from protos.atelier.v1 import control_plane_pb2

MAX_FILE_BYTES = 32 * 1024 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("provenance", help="signed content credentials and watermarks of images")
    commands = parser.add_subparsers(dest="provenance_command", required=True, metavar="COMMAND")
    verify = commands.add_parser(
        "verify",
        help="read an image's C2PA manifest and watermark; name its content if it is this tenant's",
        description=(
            "Reads FILE's C2PA manifest (trusted, untrusted, invalid or absent, and why) and its invisible "
            "watermark (which survives re-encoding and stripped metadata). When either identifies content "
            "of your tenant, prints its content id, model, creation time and current training eligibility."
        ),
    )
    verify.add_argument("file", type=Path, metavar="FILE", help="a PNG, JPEG or WebP image")
    add_json_flag(verify)
    verify.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CommandError(f"{path} is larger than {MAX_FILE_BYTES} bytes", "INVALID_ARGUMENT")
        data = path.read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}", "INVALID_ARGUMENT") from None
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.VerifyProvenance(
            control_plane_pb2.VerifyProvenanceRequest(data=data), metadata=cluster.metadata
        )
    result: dict[str, Any] = MessageToDict(response, preserving_proto_field_name=True)
    emit(result, _describe(response), json_output=args.json)
    return 0


def _describe(response: control_plane_pb2.VerifyProvenanceResponse) -> str:
    manifest = response.manifest
    status = control_plane_pb2.ManifestStatus.Name(manifest.status).removeprefix("MANIFEST_STATUS_").lower()
    lines = [f"manifest: {status} ({manifest.explanation})"]
    if manifest.label:
        lines += [
            f"  generator: {manifest.claim_generator}, signed by {manifest.signer or 'unknown'}",
            f"  actions: {', '.join(manifest.actions)}; source type: {manifest.digital_source_type.rsplit('/', 1)[-1]}",
            f"  model: {manifest.model} {manifest.model_version}".rstrip(),
            f"  created: {manifest.created_at}; content id (as signed): {manifest.content_id or '-'}",
            f"  training use (as signed): {manifest.training_use or '-'}; ingredients: {manifest.ingredient_count}",
        ]
    mark = control_plane_pb2.WatermarkStatus.Name(response.watermark).removeprefix("WATERMARK_STATUS_").lower()
    lines.append(f"watermark: {mark.replace('_', ' ')}")
    if response.content_id:
        eligible = "eligible" if response.eligible_for_training else "not eligible"
        lines += [
            f"content: {response.content_id} (identified by its {response.identified_by})",
            f"  model: {response.model}; created: {response.created_at.ToJsonString()}",
            f"  training: {eligible} now ({response.training_explanation}); "
            f"the file said {response.training_use_when_made or '-'} when made",
        ]
    else:
        lines.append("content: not identified as content of this tenant")
    return "\n".join(lines)
