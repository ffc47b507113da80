"""Does batching pay? Throughput of 8 concurrent callers with batching vs without, same run.

Both arms run the replica's own scheduler (`inference.deployments.batching.BatchScheduler`) on the same
loaded model and backend, with the torch thread count a replica gets, in this process: the only
difference is `max_batch_images` (8 vs 1). Every caller sends compatible requests (same size, steps and
guidance; its own prompt and seed) back to back; the arms alternate in rounds so drift on a shared
machine hits both. Prints images/s of each arm, the ratio, and the mean batch size observed.
Target (DESIGN.md §7): ratio >= 1.2 on the CPU, >= 3 on a GPU.

    python benchmarks/batching.py                          # tiny-sd on the CPU, 64x64, 20 steps
    python benchmarks/batching.py --requests 8 --steps 2 --json   # tiny mode, as the tests run it
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from inference.backends import BackendOptions, GenerationParams, create_backend
from inference.config import DTYPES
from inference.deployments.batching import BatchScheduler
from inference.models import ModelSource, load_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-sd", help="builtin model name or local checkpoint directory")
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--size", type=int, default=64, help="image width and height in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--callers", type=int, default=8, help="concurrent callers")
    parser.add_argument("--max-batch", type=int, default=8, help="max_batch_images of the batching arm")
    parser.add_argument("--requests", type=int, default=64, help="requests per arm and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both arms")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a replica's num_cpus)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "atelier-bench-models")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    source = ModelSource.from_setting(args.model, args.cache_dir)
    pipeline = load_pipeline(source, args.device, args.dtype)
    backend = create_backend(
        args.backend, pipeline, BackendOptions(cache_dir=args.cache_dir / "compiled", max_batch_images=args.max_batch)
    )
    # Warm-up: first calls allocate, and compiling backends compile, for each batch size.
    for batch in (1, args.max_batch):
        backend.generate_batch([_params(args, seed) for seed in range(batch)])

    measured: dict[str, list[float]] = {"unbatched": [], "batched": []}
    batch_sizes: list[int] = []
    for _ in range(args.rounds):
        for arm, max_images in (("unbatched", 1), ("batched", args.max_batch)):
            sizes: list[int] = []
            scheduler = BatchScheduler(backend, max_batch_images=max_images, on_batch=sizes.append)
            seconds = asyncio.run(_drive(scheduler, args))
            measured[arm].append(args.requests / seconds)
            if arm == "batched":
                batch_sizes.extend(sizes)
    unbatched = statistics.median(measured["unbatched"])
    batched = statistics.median(measured["batched"])
    result = {
        "model": args.model,
        "backend": args.backend,
        "device": args.device,
        "size": args.size,
        "steps": args.steps,
        "callers": args.callers,
        "max_batch": args.max_batch,
        "unbatched_images_per_s": round(unbatched, 2),
        "batched_images_per_s": round(batched, 2),
        "throughput_ratio": round(batched / unbatched, 3),
        "mean_batch_size": round(statistics.mean(batch_sizes), 2) if batch_sizes else 0.0,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>24}  {value}")
    return 0


def _params(args: argparse.Namespace, seed: int) -> GenerationParams:
    return GenerationParams(
        prompt=f"a lighthouse at dusk, oil painting, variation {seed}",
        negative_prompt="",
        width=args.size,
        height=args.size,
        steps=args.steps,
        guidance_scale=7.5,
        seed=seed,
        num_images=1,
    )


async def _drive(scheduler: BatchScheduler, args: argparse.Namespace) -> float:
    """Seconds for `args.callers` callers to get `args.requests` requests done between them."""
    remaining = iter(range(args.requests))

    async def caller() -> None:
        for seed in remaining:
            await scheduler.run(_params(args, seed))

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(args.callers)))
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
