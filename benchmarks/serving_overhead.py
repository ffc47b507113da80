"""What does serving add to a generation? End-to-end gRPC Generate vs a direct pipeline call, same run.

The baseline loads the same model (same cached weights, same backend, same torch thread count as a
replica) in this process and calls it directly, PNG encoding included, since callers receive PNGs.
The served path is a real `Generate` over gRPC: Serve proxy -> Gateway -> control plane reserve ->
DiffusionModel replica -> control plane store + commit.

For steps 1 and 20 it prints p50/p95 latency of both paths with one caller, the added latency, and
the throughput with 4 concurrent callers against the direct path's sequential throughput (one
pipeline cannot run two requests at once, so that is the most the replica could deliver). With it,
the CPU each image costs on each path, the served one by process (model replica, gateway, Serve's
proxy, control plane, PostgreSQL, the rest of Ray, the callers): on a CPU-only machine all of them
share the cores the model runs on, so every millisecond the serving path spends is one the model
does not get.
Targets (DESIGN.md §7): added p50 <= 10 ms at steps=1 on the CPU; throughput ratio >= 0.95 at 20 steps.

Where the served time goes: the p50 of each stage of the `StageTimings` every response carries
(reserve, queue, denoise, decode, scan, store, total at the gateway), and `proxy`, the client's latency minus
the gateway's total (Serve's proxy, the client's gRPC). What marking adds to a generation: the
watermark and signed manifest StoreContent puts on each image, timed on the served image's pixels
(`marking_p50_ms`, part of the store stage).

Streaming: the same request as a `GenerateStream` with one caller, timed to its first progress message
(vs the direct call's first denoising step) and to its final result (vs the whole direct call).

    python benchmarks/serving_overhead.py                 # starts its own cluster in a temp dir
    python benchmarks/serving_overhead.py --home .atelier # uses the cluster `atelier up` started there
    python benchmarks/serving_overhead.py --iterations 3 --json   # tiny mode, as the tests run it
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atelier.health import APP_NAME, POOL_DEPLOYMENT_PREFIX
from atelier.state import ClusterState
from benchmarks._memory import cluster_pids, process_label
from benchmarks._serving import (
    PROMPT,
    Metadata,
    create_funded_accounts,
    direct_generate_caller,
    local_cluster,
    operator_metadata,
    percentile,
)
from inference.metrics import STAGES
from protos.atelier.v1 import inference_pb2, inference_pb2_grpc

CONCURRENT_CALLERS = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="use the running cluster started from this ATELIER_HOME")
    parser.add_argument("--iterations", type=int, default=30, help="timed requests per path and step count")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 20], help="step counts to measure")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    with local_cluster(args.home) as (state, home):
        metadata = operator_metadata(home)
        results = [_measure(state, home, metadata, steps, args.iterations) for steps in args.steps]
    if args.json:
        print(json.dumps({"results": results}, indent=2))
    else:
        _print_table(results)
    return 0


def _marking_ms(served_png: bytes, iterations: int) -> list[float]:
    """Milliseconds per image of what StoreContent adds to mark a generated image (watermark where the image
    is large enough, then the signed C2PA manifest), timed here on the served image's pixels: the `store`
    stage holds this besides its SQL and blob write."""
    import tempfile
    from datetime import UTC, datetime
    from uuid import uuid4

    from PIL import Image

    from control_plane.provenance import watermark
    from control_plane.provenance.certificates import ensure_development_credentials
    from control_plane.provenance.manifest import ManifestFacts, TrainingUse, sign_png

    with Image.open(io.BytesIO(served_png)) as image:  # its pixels, without the served file's manifest
        plain = io.BytesIO()
        image.convert("RGB").save(plain, "PNG")
        width, height = image.size
    with tempfile.TemporaryDirectory() as directory:
        credentials = ensure_development_credentials(Path(directory), warn=False)
    timings = []
    for _ in range(iterations + 3):
        started = time.perf_counter()
        png = plain.getvalue()
        if watermark.fits(width, height):
            png = watermark.embed_in_png(png, 0x5A5A5A5A5A5A)
        sign_png(png, ManifestFacts(uuid4(), "bench", "", datetime.now(UTC), TrainingUse.ALLOWED), credentials)
        timings.append((time.perf_counter() - started) * 1000)
    return timings[3:]  # after warm-up


def _measure(state: ClusterState, home: Path, metadata: Metadata, steps: int, iterations: int) -> dict[str, float]:
    direct = direct_generate_caller(home, steps)
    (account_id,) = create_funded_accounts(state.control_plane_address, metadata)
    with grpc.insecure_channel(state.serve_grpc_address) as serve:
        stub = inference_pb2_grpc.InferenceStub(serve)
        request = inference_pb2.GenerateRequest(account_id=account_id, prompt=PROMPT, steps=steps, seed=1)

        stages: list[dict[str, float]] = []

        def served() -> None:
            started = time.perf_counter()
            timings = stub.Generate(request, metadata=metadata, timeout=300).timings
            client_ms = (time.perf_counter() - started) * 1000
            stages.append(
                {**{stage: getattr(timings, f"{stage}_ms") for stage in STAGES}, "proxy": client_ms - timings.total_ms}
            )

        def streamed() -> float:
            """Seconds to the first progress message; the stream is read to its result."""
            started = time.perf_counter()
            first_progress = None
            result = None
            for event in stub.GenerateStream(request, metadata=metadata, timeout=300):
                if event.HasField("progress") and first_progress is None:
                    first_progress = time.perf_counter() - started
                elif event.HasField("result"):
                    result = event.result
            if first_progress is None or result is None:
                raise RuntimeError("GenerateStream ended without a progress message and a result")
            return first_progress

        for call in (direct, served, streamed):  # warm-up: caches, connections, first-call allocations
            for _ in range(3):
                call()
        cpu_before = _own_cpu_s()
        direct_latencies, direct_first_steps = _latencies(direct, iterations)
        direct_cpu_s = _own_cpu_s() - cpu_before
        stages.clear()
        served_latencies, _ = _latencies(served, iterations)
        stage_p50_ms = {f"stage_{name}_p50_ms": percentile([s[name] for s in stages], 50) for name in stages[0]}
        stream_latencies, stream_first_progress = _latencies(streamed, iterations)
        cpu_before = _cluster_cpu_s(state, home)
        served_throughput = _throughput(served, iterations, CONCURRENT_CALLERS)
        cpu_after = _cluster_cpu_s(state, home)
        served_cpu_ms = {
            group: (cpu_after[group] - cpu_before.get(group, 0.0)) / (iterations * CONCURRENT_CALLERS) * 1000
            for group in cpu_after
        }
        marking_ms = _marking_ms(stub.Generate(request, metadata=metadata, timeout=300).images[0].png, iterations)
    direct_throughput = 1.0 / statistics.fmean(direct_latencies)
    return {
        "steps": steps,
        "iterations": iterations,
        "direct_p50_ms": percentile(direct_latencies, 50) * 1000,
        "direct_p95_ms": percentile(direct_latencies, 95) * 1000,
        "served_p50_ms": percentile(served_latencies, 50) * 1000,
        "served_p95_ms": percentile(served_latencies, 95) * 1000,
        "added_p50_ms": (percentile(served_latencies, 50) - percentile(direct_latencies, 50)) * 1000,
        "direct_images_per_s": direct_throughput,
        "served_images_per_s_4_callers": served_throughput,
        "throughput_ratio": served_throughput / direct_throughput,
        "direct_cpu_ms_per_image": direct_cpu_s / iterations * 1000,
        "served_cpu_ms_per_image": sum(served_cpu_ms.values()),
        "served_cpu_ms_per_image_by_process": served_cpu_ms,
        "direct_first_step_p50_ms": percentile(direct_first_steps, 50) * 1000,
        "stream_first_progress_p50_ms": percentile(stream_first_progress, 50) * 1000,
        "stream_first_progress_p95_ms": percentile(stream_first_progress, 95) * 1000,
        "stream_p50_ms": percentile(stream_latencies, 50) * 1000,
        "stream_p95_ms": percentile(stream_latencies, 95) * 1000,
        "marking_p50_ms": percentile(marking_ms, 50),
        "stream_added_first_progress_p50_ms": (
            percentile(stream_first_progress, 50) - percentile(direct_first_steps, 50)
        )
        * 1000,
        "stream_added_p50_ms": (percentile(stream_latencies, 50) - percentile(direct_latencies, 50)) * 1000,
        **stage_p50_ms,
    }


def _own_cpu_s() -> float:
    """CPU seconds (user + system) this process has used: the direct path's pipeline and its caller."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def _cluster_cpu_s(state: ClusterState, home: Path) -> dict[str, float]:
    """CPU seconds each part of the served path has used so far: the cluster's processes grouped by
    what they are, and this process (the callers' gRPC clients)."""
    totals: dict[str, float] = defaultdict(float)
    for pid in cluster_pids(state, home):
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                group = _cpu_group(process_label(process.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # a process that ended between the samples: its CPU is not counted
        totals[group] += times.user + times.system
    totals["clients"] = _own_cpu_s()
    return totals


def _cpu_group(label: str) -> str:
    for prefix, group in _CPU_GROUPS:
        if label.startswith(prefix):
            return group
    return "ray (other)"


_CPU_GROUPS = (
    (f"ray::ServeReplica:{APP_NAME}:{POOL_DEPLOYMENT_PREFIX}", "model replica"),
    (f"ray::ServeReplica:{APP_NAME}:", "gateway"),
    ("ray::ProxyActor", "serve proxy"),
    ("control-plane", "control plane"),
    ("postgres", "postgresql"),
)
"""Where a served image's CPU goes, by the `process_label` of each cluster process."""


def _latencies(call: Callable[[], float | None], iterations: int) -> tuple[list[float], list[float]]:
    """Each call's latency and, for calls that return one, its time to first progress (seconds)."""
    latencies: list[float] = []
    first_progress: list[float] = []
    for _ in range(iterations):
        started = time.perf_counter()
        first = call()
        latencies.append(time.perf_counter() - started)
        if first is not None:
            first_progress.append(first)
    return latencies, first_progress


def _throughput(call: Callable[[], None], iterations: int, callers: int) -> float:
    total = iterations * callers
    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        for future in [pool.submit(call) for _ in range(total)]:
            future.result()
    return total / (time.perf_counter() - started)


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
    print()
    print(
        f"{'steps':>5} {'direct 1st step':>16} {'stream 1st p50':>15} {'stream 1st p95':>15} {'added 1st':>10} "
        f"{'stream p50':>11} {'stream p95':>11} {'added p50':>10}"
    )
    for r in results:
        print(
            f"{r['steps']:>5} {r['direct_first_step_p50_ms']:>14.1f}ms {r['stream_first_progress_p50_ms']:>13.1f}ms "
            f"{r['stream_first_progress_p95_ms']:>13.1f}ms {r['stream_added_first_progress_p50_ms']:>8.1f}ms "
            f"{r['stream_p50_ms']:>9.1f}ms {r['stream_p95_ms']:>9.1f}ms {r['stream_added_p50_ms']:>8.1f}ms"
        )
    print()
    print(f"{'steps':>5} " + " ".join(f"{name:>9}" for name in _STAGE_COLUMNS) + "   (served p50 by stage, ms)")
    for r in results:
        print(f"{r['steps']:>5} " + " ".join(f"{r[f'stage_{name}_p50_ms']:>9.1f}" for name in _STAGE_COLUMNS))
    print()
    for r in results:
        print(
            f"steps={r['steps']}: marking (watermark where it fits, signed C2PA manifest) p50 "
            f"{r['marking_p50_ms']:.1f} ms per image, part of the store stage's {r['stage_store_p50_ms']:.1f} ms"
        )
        by_process = ", ".join(
            f"{group} {ms:.1f}" for group, ms in sorted(r["served_cpu_ms_per_image_by_process"].items(), key=_by_ms)
        )
        print(
            f"steps={r['steps']}: CPU per image, direct {r['direct_cpu_ms_per_image']:.1f} ms; served (4 callers) "
            f"{r['served_cpu_ms_per_image']:.1f} ms: {by_process}"
        )


def _by_ms(item: tuple[str, float]) -> float:
    return -item[1]


_STAGE_COLUMNS = ("proxy", *STAGES)
"""Where a served request's time goes, from the StageTimings every response carries; `proxy` is the
client's latency minus the gateway's total (Serve's proxy, the client's gRPC and the network)."""


if __name__ == "__main__":
    sys.exit(main())
