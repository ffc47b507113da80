"""`atelier generate`: one request through gRPC -> Ray Serve -> control plane, written to PNG files.

With ``--init-image`` it edits that image instead (image-to-image, or inpainting with ``--mask``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from atelier.cli._cluster import add_json_flag, connect, rpc_errors
from atelier.cli._output import CommandError, emit
from protos.atelier.v1 import inference_pb2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="generate an image and write it as PNG")
    parser.add_argument("prompt")
    parser.add_argument("--account", metavar="ACCOUNT_ID", help="account to charge (default: the demo account)")
    parser.add_argument("--model", default="", help="model name from ListModels (default: the cluster's default)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    parser.add_argument("--width", type=int, help="width in pixels, a multiple of 8")
    parser.add_argument("--height", type=int, help="height in pixels, a multiple of 8")
    parser.add_argument("--seed", type=int, help="seed of the first image (default: random)")
    parser.add_argument("--negative-prompt", default="", help="what the images should not show")
    parser.add_argument(
        "--guidance", type=float, help="guidance scale, how closely to follow the prompt (default: the model's)"
    )
    parser.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="retrying with the same key and request returns the first result instead of generating and charging again",
    )
    parser.add_argument("--num-images", type=int, help="images to generate (default 1)")
    parser.add_argument(
        "--init-image",
        type=Path,
        metavar="PATH",
        help="edit this PNG or JPEG instead of generating from noise; it is scaled to cover the size and "
        "centre-cropped, and stored as a temporary upload (deleted after 24 hours by default)",
    )
    parser.add_argument(
        "--strength",
        type=float,
        help="with --init-image: how much to change it, 0 < S <= 1 (default 0.75); runs and charges "
        "int(steps * S) steps",
    )
    parser.add_argument(
        "--mask",
        type=Path,
        metavar="PATH",
        help="with --init-image: inpaint; a PNG or JPEG of the init image's size, white where to repaint",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("out.png"),
        help="PNG path; with several images, NAME-1.png, NAME-2.png... follow (default out.png)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up (default 600)")
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    _check_writable(args.output)  # before anything is charged: a finished generation would be lost
    with connect(args.timeout) as cluster:
        account_id = args.account or cluster.state.demo_account_id
        if not account_id:
            raise CommandError("no --account given and the cluster has no demo account")
        request = inference_pb2.GenerateRequest(
            account_id=account_id, model=args.model, prompt=args.prompt, negative_prompt=args.negative_prompt
        )
        if args.guidance is not None:
            request.guidance_scale = args.guidance
        if args.idempotency_key is not None:
            request.idempotency_key = args.idempotency_key
        for field in ("steps", "width", "height", "seed", "num_images"):
            value = getattr(args, field)
            if value is not None:
                try:
                    setattr(request, field, value)
                except ValueError:  # protobuf rejects values outside the unsigned field's range
                    flag = "--" + field.replace("_", "-")
                    raise CommandError(
                        f"{flag} must be a non-negative integer below 2**64", "INVALID_ARGUMENT"
                    ) from None
        _add_edit(request, args)
        show_progress = not args.json and sys.stderr.isatty()
        result: inference_pb2.GenerateResponse | None = None
        with rpc_errors():
            for message in cluster.inference.GenerateStream(request, metadata=cluster.metadata, timeout=args.timeout):
                if message.HasField("progress") and show_progress:
                    progress = message.progress
                    print(f"\rstep {progress.step}/{progress.total_steps}", end="", file=sys.stderr, flush=True)
                elif message.HasField("result"):
                    result = message.result
        if show_progress:
            print(file=sys.stderr)
    if result is None:
        raise CommandError("the stream ended without a result", "UNAVAILABLE")
    paths = _write_images(args.output, [image.png for image in result.images])
    files = [str(path) for path in paths]
    summary = {
        "account_id": account_id,
        "files": files,
        "content_ids": [image.content_id for image in result.images],
        "seeds": [image.seed for image in result.images],
        "model": result.parameters.model,
        "width": result.parameters.width,
        "height": result.parameters.height,
        "steps": result.parameters.steps,
        "credits_charged": result.credits_charged,
        "credits_available": result.credits_available,
        "total_ms": round(result.timings.total_ms, 1),
        "request_id": result.request_id,
    }
    if result.upload_content_id:
        summary["upload_content_id"] = result.upload_content_id
        summary["strength"] = round(result.parameters.strength, 6)
    text = (
        f"wrote {', '.join(files)} ({result.parameters.width}x{result.parameters.height}, "
        f"{result.parameters.steps} steps, seed {result.images[0].seed}, model {result.parameters.model}); "
        f"charged {result.credits_charged} credits, {result.credits_available} left; "
        f"{result.timings.total_ms:.0f} ms"
    )
    if result.upload_content_id:
        text += f"; edited at strength {summary['strength']:g}, init image stored as upload {result.upload_content_id}"
    emit(summary, text, json_output=args.json)
    return 0


def _add_edit(request: inference_pb2.GenerateRequest, args: argparse.Namespace) -> None:
    """Sets the edit fields from --init-image, --strength and --mask (the server checks their values)."""
    if args.init_image is not None:
        request.init_image = _read_image("--init-image", args.init_image)
    elif args.mask is not None or args.strength is not None:
        raise CommandError("--strength and --mask need --init-image", "INVALID_ARGUMENT")
    if args.strength is not None:
        request.strength = args.strength
    if args.mask is not None:
        request.mask_image = _read_image("--mask", args.mask)


def _read_image(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"{flag} {path}: cannot read it ({exc.strerror or exc})", "INVALID_ARGUMENT") from None


def _check_writable(output: Path) -> None:
    """Raises a CommandError when `output` (and the NAME-2.png... beside it) cannot be written."""
    directory = output.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(
            f"-o {output}: cannot create {directory} ({exc.strerror or exc})", "INVALID_ARGUMENT"
        ) from None
    if output.is_dir():
        raise CommandError(f"-o {output}: is a directory; name a .png file", "INVALID_ARGUMENT")
    try:  # trying beats os.access, which root (or a read-only mount) would answer wrongly
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".atelier-write-check-"):
            pass
        if output.exists():
            with output.open("ab"):
                pass
    except OSError as exc:
        raise CommandError(
            f"-o {output}: cannot write there ({exc.strerror or exc}); nothing was generated or charged",
            "INVALID_ARGUMENT",
        ) from None


def _write_images(output: Path, pngs: list[bytes]) -> list[Path]:
    paths = [
        output if index == 0 else output.with_name(f"{output.stem}-{index}{output.suffix}")
        for index in range(len(pngs))
    ]
    for path, png in zip(paths, pngs, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    return paths
