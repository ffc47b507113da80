"""What does serving add to a generation? End-to-end gRPC Generate vs a direct pipeline call, same run.

The baseline loads the same model (same cached weights, same backend, same torch thread count as a
replica) in this process and calls it directly, PNG encoding included, since callers receive PNGs.
The served path is a real `Generate` over gRPC: Serve proxy -> Gateway -> control plane reserve ->
DiffusionModel replica -> control plane store + commit.

For steps 1 and 20 it prints p50/p95 latency of both paths with one caller, the added latency, and
the throughput with 4 concurrent callers against the direct path's sequential throughput (one
pipeline cannot run two requests at once, so that is the most the replica could deliver).
Targets (DESIGN.md §7): added p50 <= 10 ms at steps=1 on the CPU; throughput ratio >= 0.95 at 20 steps.

    python benchmarks/serving_overhead.py                 # starts its own cluster in a temp dir
    python benchmarks/serving_overhead.py --home .atelier # uses the cluster `atelier up` started there
    python benchmarks/serving_overhead.py --iterations 3 --json   # tiny mode, as the tests run it
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from atelier.launcher import LocalCluster
from atelier.ports import local_cluster_ports
from atelier.settings import ClusterSettings
from atelier.state import ClusterState, load_operator_key
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc, inference_pb2, inference_pb2_grpc

PROMPT = "a lighthouse at dusk, oil painting"
CONCURRENT_CALLERS = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="use the running cluster started from this ATELIER_HOME")
    parser.add_argument("--iterations", type=int, default=30, help="timed requests per path and step count")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 20], help="step counts to measure")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    with _cluster(args.home) as (state, home):
        key = load_operator_key(home)
        if key is None:
            raise SystemExit(f"no operator key under {home}")
        metadata = (("authorization", f"Bearer {key}"),)
        results = [_measure(state, home, metadata, steps, args.iterations) for steps in args.steps]
    if args.json:
        print(json.dumps({"results": results}, indent=2))
    else:
        _print_table(results)
    return 0


@contextlib.contextmanager
def _cluster(home: Path | None) -> Iterator[tuple[ClusterState, Path]]:
    if home is not None:
        state = ClusterState.load(home.resolve())
        if state is None:
            raise SystemExit(f"no cluster is running from {home}; start one with `atelier up`")
        yield state, home.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as directory:
        settings = ClusterSettings(home=Path(directory), **local_cluster_ports())
        cluster = LocalCluster(settings, log=lambda line: print(line, file=sys.stderr))
        try:
            yield cluster.up(), settings.home.resolve()
        finally:
            cluster.down()


def _measure(state: ClusterState, home: Path, metadata, steps: int, iterations: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    direct = _direct_caller(home, steps)
    with (
        grpc.insecure_channel(state.serve_grpc_address) as serve,
        grpc.insecure_channel(state.control_plane_address) as control,
    ):
        account_id = (
            control_plane_pb2_grpc.ControlPlaneStub(control)
            .CreateAccount(
                control_plane_pb2.CreateAccountRequest(birth_date="1990-01-01", initial_credits=10**9),
                metadata=metadata,
            )
            .account.account_id
        )
        stub = inference_pb2_grpc.InferenceStub(serve)
        request = inference_pb2.GenerateRequest(account_id=account_id, prompt=PROMPT, steps=steps, seed=1)

        def served() -> None:
            stub.Generate(request, metadata=metadata, timeout=300)

        for call in (direct, served):  # warm-up: caches, connections, first-call allocations
            for _ in range(3):
                call()
        direct_latencies = _latencies(direct, iterations)
        served_latencies = _latencies(served, iterations)
        served_throughput = _throughput(served, iterations, CONCURRENT_CALLERS)
    direct_throughput = 1.0 / statistics.fmean(direct_latencies)
    return {
        "steps": steps,
        "iterations": iterations,
        "direct_p50_ms": _percentile(direct_latencies, 50) * 1000,
        "direct_p95_ms": _percentile(direct_latencies, 95) * 1000,
        "served_p50_ms": _percentile(served_latencies, 50) * 1000,
        "served_p95_ms": _percentile(served_latencies, 95) * 1000,
        "added_p50_ms": (_percentile(served_latencies, 50) - _percentile(direct_latencies, 50)) * 1000,
        "direct_images_per_s": direct_throughput,
        "served_images_per_s_4_callers": served_throughput,
        "throughput_ratio": served_throughput / direct_throughput,
    }


def _direct_caller(home: Path, steps: int) -> Callable[[], None]:
    """The baseline: the same model and backend a replica runs, called in this process."""
    import torch

    from inference.backends import GenerationParams, create_backend
    from inference.config import ServeConfig
    from inference.models import ModelSource, load_pipeline

    model = ServeConfig().default_model
    # Ray gives a replica OMP_NUM_THREADS = its num_cpus; the baseline gets the same compute.
    torch.set_num_threads(max(1, int(model.num_cpus)))
    pipeline = load_pipeline(ModelSource.from_setting(model.source, home / "models"), model.device, torch.float32)
    backend = create_backend(model.backend, pipeline)
    params = GenerationParams(
        prompt=PROMPT,
        negative_prompt="",
        width=model.default_width,
        height=model.default_height,
        steps=steps,
        guidance_scale=model.default_guidance_scale,
        seed=1,
        num_images=1,
    )

    def call() -> None:
        image = backend.generate(params)[0]
        image.save(io.BytesIO(), format="PNG", compress_level=1)

    return call


def _latencies(call: Callable[[], None], iterations: int) -> list[float]:
    latencies = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


def _throughput(call: Callable[[], None], iterations: int, callers: int) -> float:
    total = iterations * callers
    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        for future in [pool.submit(call) for _ in range(total)]:
            future.result()
    return total / (time.perf_counter() - started)


def _percentile(values: list[float], percentile: int) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(percentile / 100 * (len(ordered) - 1)))
    return ordered[index]


def _print_table(results: list[dict[str, float]]) -> None:
    header = (
        f"{'steps':>5} {'direct p50':>11} {'direct p95':>11} {'served p50':>11} {'served p95':>11} "
        f"{'added p50':>10} {'direct img/s':>13} {'served img/s (4)':>17} {'ratio':>6}"
    )
    print(header)
    for r in results:
        print(
            f"{r['steps']:>5} {r['direct_p50_ms']:>9.1f}ms {r['direct_p95_ms']:>9.1f}ms {r['served_p50_ms']:>9.1f}ms "
            f"{r['served_p95_ms']:>9.1f}ms {r['added_p50_ms']:>8.1f}ms {r['direct_images_per_s']:>13.2f} "
            f"{r['served_images_per_s_4_callers']:>17.2f} {r['throughput_ratio']:>6.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())
