"""`atelier models build [--model NAME] [--backend B] [--json]`: build compiled artefacts ahead of replicas.

Loads each model named in the serve config (`ATELIER_SERVE_CONFIG`) as a replica would, into the model
cache under `ATELIER_HOME`, and warms every shape bucket once: ONNX exports and TensorRT engines are
built into the shared artefact cache (under the same lock replicas take, so a build and a starting
replica never both build), and `compile` fills inductor's on-disk cache. Replicas then only load them.
No cluster is needed; on Kubernetes the chart runs it as a Job per GPU pool before replicas start.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

from atelier.cli._cluster import add_json_flag
from atelier.cli._output import CommandError, emit


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="build models' compiled artefacts ahead of the replicas")
    actions = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="export, build and compile the models of ATELIER_SERVE_CONFIG into the cache under ATELIER_HOME",
    )
    build.add_argument("--model", metavar="NAME", help="only this model (default: every model of the config)")
    build.add_argument("--backend", metavar="B", help="build for this backend instead of the model's own")
    add_json_flag(build)
    build.set_defaults(run=run_build)


def run_build(args: argparse.Namespace) -> int:
    from inference.backends import BackendUnavailable
    from inference.config import BACKENDS, ConfigError, ServeConfig
    from inference.deployments.loading import load_backend, warm_up

    try:
        config = ServeConfig.from_env()
    except ConfigError as exc:
        raise CommandError(str(exc), "INVALID_ARGUMENT") from None
    models = [m for m in config.models if args.model in (None, m.name)]
    if not models:
        names = ", ".join(m.name for m in config.models)
        raise CommandError(f"--model {args.model!r} is not in the serve config; it has {names}", "INVALID_ARGUMENT")
    if args.backend is not None and args.backend not in BACKENDS:
        raise CommandError(
            f"--backend {args.backend!r} is not a backend; use one of {', '.join(BACKENDS)}", "INVALID_ARGUMENT"
        )
    built = []
    for model in models:
        if args.backend is not None:
            model = dataclasses.replace(model, backend=args.backend)
        if not args.json:
            print(
                f"building {model.name} ({model.backend}, {model.buckets.describe() or 'no buckets'}) ...", flush=True
            )
        buckets: dict[str, float] = {}
        started = time.perf_counter()
        try:
            backend = load_backend(model, config.model_cache_dir)
            loaded_s = time.perf_counter() - started
            warm_up(backend, model, functools.partial(_progress, buckets, quiet=args.json))
        except BackendUnavailable as exc:
            raise CommandError(str(exc), "FAILED_PRECONDITION") from None
        seconds = time.perf_counter() - started
        built.append(
            {
                "model": model.name,
                "backend": model.backend,
                "load_s": round(loaded_s, 2),
                "seconds": round(seconds, 2),
                "buckets": {name: round(s, 2) for name, s in buckets.items()},
            }
        )
        if not args.json:
            print(f"built {model.name} ({model.backend}) in {seconds:.1f} s (load and build {loaded_s:.1f} s)")
    emit(
        {"models": built, "cache_dir": str(config.model_cache_dir)},
        f"artefacts in {config.model_cache_dir}",
        json_output=args.json,
    )
    return 0


def _progress(buckets: dict[str, float], bucket: str, seconds: float, *, quiet: bool) -> None:
    buckets[bucket] = seconds
    if not quiet:
        print(f"  bucket {bucket} warm in {seconds:.1f} s", flush=True)
