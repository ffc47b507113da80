"""How much load does a cluster take, and does its memory stay flat under load? Open-loop gRPC load.

Requests arrive as a Poisson process at an offered rate and are sent on schedule whatever the replies
do (open loop), so a saturated service shows as queueing latency and errors, not as a politely slower
client. Latency runs from each request's scheduled send time to its reply, so a late client cannot hide
queueing either. The request mix is weighted (`--mix generate=8,stream=1,balance=1`): unary `Generate`,
`GenerateStream` read to its result, and the control plane's `GetBalance`, spread over several funded
accounts.

Sweep (the default): one run per offered rate, lowest first; for each it prints achieved throughput
(OK replies per second), p50/p95/p99 latency of OK replies and errors by gRPC code. The baseline,
measured in the same run, is the direct pipeline's capacity: images per second of the same model and
backend called sequentially in this process (`benchmarks/_serving.direct_generate_caller`). Without
`--rates`, the offered rates are `--loads` multiples of it, counted in generation requests.

The knee is the highest offered rate of the sweep at which the service still keeps up, i.e. all of:
achieved >= 90% of the rate actually sent (OK replies per second, until the last reply, against requests
sent per second of arrivals), errors <= 1% of requests, and p99 <= the bound (`--p99-bound-ms`, by default
5x the p50 at the lowest offered rate, i.e. the tail has not grown past five unqueued requests). The
sweep stops after the first rate past the knee, so an overloaded shared machine is not kept overloaded.

Overload (`--overload`, by default 1.5x and 3x): once the knee is known, one run at each multiple of the
knee's offered rate. Overload must keep goodput: OK replies per second >= 90% of the knee's, p99 of the
OK replies <= 2x the knee's, and the excess refused at once with UNAVAILABLE (its latency is reported
as `refusal_p50_ms`/`refusal_p99_ms`) and no other error. Each overload row says whether it holds.

Soak (`--soak`): a constant offered rate for `--minutes`, sampling the RSS of every process of the
cluster every `--sample-every` seconds. Writes the memory curve (CSV, one row per process and sample:
RSS and private memory) and a JSON summary, and prints per process first/last/max RSS and the
least-squares slopes over the second half in MB/hour, flagging growth of private memory.

    python benchmarks/load.py                                 # own cluster, auto sweep
    python benchmarks/load.py --home .atelier --rates 2,4,8,16 --duration 30
    python benchmarks/load.py --home .atelier --soak --minutes 30 --rate 4 --out soak-results
    python benchmarks/load.py --rates 1,2 --duration 3 --json  # tiny mode, as the tests run it
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atelier.state import ClusterState
from benchmarks._memory import GROWTH_FLOOR_MB, Sample, cluster_pids, memory_trends, sample_rss
from benchmarks._serving import (
    PROMPT,
    Metadata,
    create_funded_accounts,
    direct_generate_caller,
    local_cluster,
    operator_metadata,
    percentile,
)
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc, inference_pb2, inference_pb2_grpc

KINDS = ("generate", "stream", "balance")
"""Request kinds of a mix: unary Generate, GenerateStream read to its result, GetBalance."""
_GENERATING = ("generate", "stream")

KEEPS_UP_FRACTION = 0.9
"""Knee rule: achieved throughput must be at least this fraction of the rate actually sent."""
MAX_ERROR_FRACTION = 0.01
"""Knee rule: at most this fraction of requests may fail."""
DEFAULT_P99_BOUND_FACTOR = 5.0
"""Knee rule: the default p99 bound, in multiples of the p50 at the lowest offered rate (the service's
latency before it queues)."""
OVERLOAD_GOODPUT_FRACTION = 0.9
"""Overload rule: OK replies per second at least this fraction of the knee's."""
OVERLOAD_P99_FACTOR = 2.0
"""Overload rule: p99 of OK replies at most this multiple of the knee's."""
REFUSAL_CODE = "UNAVAILABLE"
"""The code of a refusal the overload rule accepts (POOL_AT_CAPACITY, with a RetryInfo)."""


@dataclass(frozen=True)
class RequestMix:
    """Relative weights of the request kinds."""

    weights: dict[str, float]

    @classmethod
    def parse(cls, text: str) -> RequestMix:
        """Parses `kind=weight,...`, e.g. `generate=8,stream=1,balance=1`."""
        weights: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            kind, _, weight = part.partition("=")
            if kind not in KINDS:
                raise argparse.ArgumentTypeError(f"--mix: unknown kind {kind!r}; use {', '.join(KINDS)}")
            try:
                weights[kind] = float(weight or 1)
            except ValueError:
                raise argparse.ArgumentTypeError(f"--mix: weight of {kind} must be a number, got {weight!r}") from None
            if weights[kind] < 0:
                raise argparse.ArgumentTypeError(f"--mix: weight of {kind} must be >= 0")
        if sum(weights.values()) <= 0:
            raise argparse.ArgumentTypeError("--mix: give at least one kind a positive weight")
        return cls(weights)

    @property
    def generating_share(self) -> float:
        """Fraction of requests that generate an image."""
        return sum(self.weights.get(kind, 0.0) for kind in _GENERATING) / sum(self.weights.values())

    def choose(self, rng: random.Random) -> str:
        kinds = list(self.weights)
        return rng.choices(kinds, weights=[self.weights[k] for k in kinds])[0]


@dataclass(frozen=True)
class Outcome:
    """What became of one request."""

    kind: str
    scheduled_s: float
    """Scheduled send time, seconds since the run started."""
    latency_s: float
    """From the scheduled send time to the reply (or the error)."""
    code: str
    """`OK` or the gRPC status code's name."""
    first_progress_s: float | None = None
    """GenerateStream only: from the scheduled send time to the first progress message."""


class _Clients:
    """The async stubs and the request templates one run sends."""

    def __init__(self, state: ClusterState, metadata: Metadata, accounts: Sequence[str], steps: int, size: int | None):
        self.serve = grpc.aio.insecure_channel(state.serve_grpc_address)
        self.control = grpc.aio.insecure_channel(state.control_plane_address)
        self.inference = inference_pb2_grpc.InferenceStub(self.serve)
        self.control_plane = control_plane_pb2_grpc.ControlPlaneStub(self.control)
        self.metadata = metadata
        self.accounts = list(accounts)
        self.steps = steps
        self.size = size

    async def close(self) -> None:
        await self.serve.close()
        await self.control.close()

    async def send(self, kind: str, account_id: str, seed: int, timeout_s: float) -> float | None:
        """Sends one request of `kind`; returns seconds to the first progress message for a stream."""
        if kind == "balance":
            await self.control_plane.GetBalance(
                control_plane_pb2.GetBalanceRequest(account_id=account_id), metadata=self.metadata, timeout=timeout_s
            )
            return None
        request = inference_pb2.GenerateRequest(account_id=account_id, prompt=PROMPT, steps=self.steps, seed=seed)
        if self.size is not None:
            request.width = request.height = self.size
        if kind == "generate":
            await self.inference.Generate(request, metadata=self.metadata, timeout=timeout_s)
            return None
        started = time.perf_counter()
        first_progress = None
        got_result = False
        async for event in self.inference.GenerateStream(request, metadata=self.metadata, timeout=timeout_s):
            if event.HasField("progress") and first_progress is None:
                first_progress = time.perf_counter() - started
            got_result = got_result or event.HasField("result")
        if not got_result:
            raise _IncompleteStream()
        return first_progress


class _IncompleteStream(Exception):
    """A GenerateStream ended OK without its result message."""


async def open_loop(
    clients: _Clients, mix: RequestMix, rate: float, duration_s: float, timeout_s: float, rng: random.Random
) -> list[Outcome]:
    """Sends Poisson arrivals at `rate` per second for `duration_s`; returns every request's outcome.

    Waits for the replies of requests still in flight at the end (each bounded by `timeout_s`).
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[Outcome]] = []
    offset = 0.0
    while True:
        offset += rng.expovariate(rate)
        if offset >= duration_s:
            break
        delay = start + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        kind = mix.choose(rng)
        account = clients.accounts[len(tasks) % len(clients.accounts)]
        tasks.append(asyncio.create_task(_timed(clients, kind, account, len(tasks), start, offset, timeout_s)))
    return list(await asyncio.gather(*tasks))


async def _timed(
    clients: _Clients, kind: str, account: str, seed: int, start: float, offset: float, timeout_s: float
) -> Outcome:
    loop = asyncio.get_running_loop()
    scheduled = start + offset
    code = "OK"
    first_progress = None
    try:
        # A busy event loop may start `send` after the schedule: that lag counts in both latencies.
        lag = loop.time() - scheduled
        first = await clients.send(kind, account, seed, timeout_s)
        if first is not None:
            first_progress = lag + first
    except grpc.aio.AioRpcError as error:
        code = error.code().name
    except _IncompleteStream:
        code = "INCOMPLETE_STREAM"
    latency = loop.time() - scheduled
    return Outcome(kind=kind, scheduled_s=offset, latency_s=latency, code=code, first_progress_s=first_progress)


def summarize(outcomes: Sequence[Outcome], offered_rps: float, duration_s: float) -> dict[str, Any]:
    """Achieved throughput, latency percentiles of OK replies, and errors by code, of one run."""
    ok = [o for o in outcomes if o.code == "OK"]
    finished_by = max((o.scheduled_s + o.latency_s for o in outcomes), default=duration_s)
    errors = Counter(o.code for o in outcomes if o.code != "OK")
    latencies = [o.latency_s for o in ok]
    row: dict[str, Any] = {
        "offered_rps": round(offered_rps, 3),
        # What the Poisson draw actually sent: the knee rule compares with this, not with its mean.
        "sent_rps": round(len(outcomes) / duration_s, 3),
        "sent": len(outcomes),
        "ok": len(ok),
        "achieved_rps": round(len(ok) / max(duration_s, finished_by), 3),
        "errors": dict(sorted(errors.items())),
        "error_fraction": round(sum(errors.values()) / len(outcomes), 4) if outcomes else 0.0,
    }
    for p in (50, 95, 99):
        row[f"p{p}_ms"] = round(percentile(latencies, p) * 1000, 1) if latencies else None
    refusals = [o.latency_s for o in outcomes if o.code == REFUSAL_CODE]
    row["refusal_p50_ms"] = round(percentile(refusals, 50) * 1000, 1) if refusals else None
    row["refusal_p99_ms"] = round(percentile(refusals, 99) * 1000, 1) if refusals else None
    row["by_kind"] = {}
    for kind in KINDS:
        kind_latencies = [o.latency_s for o in ok if o.kind == kind]
        if kind_latencies:
            entry = {
                "ok": len(kind_latencies),
                "p50_ms": round(percentile(kind_latencies, 50) * 1000, 1),
                "p99_ms": round(percentile(kind_latencies, 99) * 1000, 1),
            }
            first = [o.first_progress_s for o in ok if o.kind == kind and o.first_progress_s is not None]
            if first:
                entry["first_progress_p50_ms"] = round(percentile(first, 50) * 1000, 1)
            row["by_kind"][kind] = entry
    return row


def keeps_up(row: dict[str, Any], p99_bound_ms: float) -> bool:
    """The knee rule: throughput tracks the offered rate, few errors, p99 within the bound."""
    return (
        row["ok"] > 0
        and row["achieved_rps"] >= KEEPS_UP_FRACTION * row["sent_rps"]
        and row["error_fraction"] <= MAX_ERROR_FRACTION
        and row["p99_ms"] is not None
        and row["p99_ms"] <= p99_bound_ms
    )


def holds_goodput(row: dict[str, Any], knee: dict[str, Any]) -> dict[str, Any]:
    """The overload rule for `row`, a run above the knee: goodput and p99 against the knee's, and
    whether every failure was a refusal."""
    goodput_ratio = row["achieved_rps"] / knee["achieved_rps"] if knee["achieved_rps"] else 0.0
    p99_ratio = row["p99_ms"] / knee["p99_ms"] if row["p99_ms"] is not None and knee["p99_ms"] else None
    other_errors = sum(count for code, count in row["errors"].items() if code != REFUSAL_CODE)
    return {
        "goodput_vs_knee": round(goodput_ratio, 3),
        "p99_vs_knee": round(p99_ratio, 3) if p99_ratio is not None else None,
        "other_errors": other_errors,
        "holds": (
            goodput_ratio >= OVERLOAD_GOODPUT_FRACTION
            and p99_ratio is not None
            and p99_ratio <= OVERLOAD_P99_FACTOR
            and other_errors == 0
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="use the running cluster started from this ATELIER_HOME")
    parser.add_argument("--mix", type=RequestMix.parse, default=RequestMix.parse("generate=8,stream=1,balance=1"))
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of each generation")
    parser.add_argument("--size", type=int, help="image width and height in pixels (the model's default)")
    parser.add_argument("--accounts", type=int, default=4, help="funded accounts the requests are spread over")
    parser.add_argument("--timeout", type=float, default=60.0, help="gRPC deadline of each request, in seconds")
    parser.add_argument("--seed", type=int, default=1, help="seed of the arrival times and the mix")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--rates", help="offered rates to sweep, requests/s, comma-separated (default: --loads)")
    sweep.add_argument(
        "--loads",
        default="0.25,0.5,1,1.5,2,3,4,6",
        help="without --rates: offered generation requests as multiples of the baseline's images/s",
    )
    sweep.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per offered rate")
    sweep.add_argument("--p99-bound-ms", type=float, help="knee rule's p99 bound (default: 5x the lowest rate's p50)")
    sweep.add_argument(
        "--overload",
        default="1.5,3",
        help="after the knee, offered rates as multiples of the knee's, comma-separated ('' for none)",
    )
    soak = parser.add_argument_group("soak")
    soak.add_argument("--soak", action="store_true", help="constant load for --minutes, sampling memory")
    soak.add_argument("--rate", type=float, help="soak: offered rate, requests/s (e.g. half the knee)")
    soak.add_argument("--minutes", type=float, default=30.0, help="soak: how long")
    soak.add_argument("--sample-every", type=float, default=10.0, help="soak: seconds between memory samples")
    soak.add_argument("--out", type=Path, help="soak: directory for memory.csv and summary.json")
    soak.add_argument("--growth-mb-per-hour", type=float, default=10.0, help="soak: growth flag, absolute part")
    soak.add_argument("--growth-fraction-per-hour", type=float, default=0.05, help="soak: growth flag, relative")
    args = parser.parse_args(argv)
    if args.soak and (args.rate is None or args.rate <= 0):
        parser.error("--soak needs --rate > 0 (requests/s), e.g. half the knee a sweep found")
    if args.steps < 1 or args.accounts < 1 or args.duration <= 0 or args.minutes <= 0 or args.sample_every <= 0:
        parser.error("--steps, --accounts, --duration, --minutes and --sample-every must be positive")

    with local_cluster(args.home) as (state, home):
        metadata = operator_metadata(home)
        accounts = create_funded_accounts(state.control_plane_address, metadata, args.accounts)
        if args.soak:
            result = asyncio.run(_soak(args, state, home, metadata, accounts))
        else:
            result = _sweep(args, state, home, metadata, accounts)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.soak:
        _print_soak(result)
    else:
        _print_sweep(result)
    return 0


def _sweep(
    args: argparse.Namespace, state: ClusterState, home: Path, metadata: Metadata, accounts: list[str]
) -> dict[str, Any]:
    direct = direct_generate_caller(home, args.steps, args.size)
    for _ in range(3):  # warm-up
        direct()
    direct_latencies = []
    for _ in range(10):
        started = time.perf_counter()
        direct()
        direct_latencies.append(time.perf_counter() - started)
    direct_image_s = statistics.fmean(direct_latencies)
    baseline_rps = 1.0 / direct_image_s
    if args.rates:
        rates = [float(r) for r in args.rates.split(",")]
    else:
        per_request = max(args.mix.generating_share, 1e-9)
        rates = [float(f) * baseline_rps / per_request for f in args.loads.split(",")]
    rows, p99_bound_ms = asyncio.run(_run_rates(args, state, metadata, accounts, sorted(rates)))
    passing = [row for row in rows if row["keeps_up"]]
    knee = passing[-1] if passing and rows[: len(passing)] == passing else None
    multiples = [float(m) for m in args.overload.split(",") if m.strip()]
    overload = asyncio.run(_run_overload(args, state, metadata, accounts, knee, multiples)) if knee else []
    return {
        "mode": "sweep",
        "mix": args.mix.weights,
        "steps": args.steps,
        "duration_s": args.duration,
        "baseline_direct_images_per_s": round(baseline_rps, 3),
        "baseline_direct_image_ms": round(direct_image_s * 1000, 1),
        "p99_bound_ms": round(p99_bound_ms, 1),
        "knee_rule": (
            f"highest offered rate with achieved >= {KEEPS_UP_FRACTION:.0%} of the rate sent, "
            f"errors <= {MAX_ERROR_FRACTION:.0%}, p99 <= {p99_bound_ms:.0f} ms"
        ),
        "rows": rows,
        "knee": knee,
        "knee_generation_rps_vs_baseline": (
            round(knee["achieved_rps"] * args.mix.generating_share / baseline_rps, 3) if knee else None
        ),
        "overload_rule": (
            f"at each multiple of the knee: achieved >= {OVERLOAD_GOODPUT_FRACTION:.0%} of the knee's, "
            f"p99 <= {OVERLOAD_P99_FACTOR:g}x the knee's, every error a {REFUSAL_CODE} refusal"
        ),
        "overload": overload,
        "overload_holds": all(row["holds"] for row in overload) if overload else None,
    }


async def _run_overload(
    args: argparse.Namespace,
    state: ClusterState,
    metadata: Metadata,
    accounts: list[str],
    knee: dict[str, Any],
    multiples: list[float],
) -> list[dict[str, Any]]:
    """One row per multiple of the knee's offered rate, each judged by `holds_goodput`."""
    clients = _Clients(state, metadata, accounts, args.steps, args.size)
    rng = random.Random(args.seed + 1)
    rows = []
    try:
        for multiple in multiples:
            rate = multiple * knee["offered_rps"]
            outcomes = await open_loop(clients, args.mix, rate, args.duration, args.timeout, rng)
            row = {"knee_multiple": multiple, **summarize(outcomes, rate, args.duration)}
            row.update(holds_goodput(row, knee))
            rows.append(row)
            print(
                f"overload {multiple:g}x knee ({rate:.2f}/s): {_row_line(row)}, refusal p99 "
                f"{row['refusal_p99_ms']} ms, goodput {row['goodput_vs_knee']}x, p99 {row['p99_vs_knee']}x",
                file=sys.stderr,
            )
    finally:
        await clients.close()
    return rows


async def _run_rates(
    args: argparse.Namespace,
    state: ClusterState,
    metadata: Metadata,
    accounts: list[str],
    rates: list[float],
) -> tuple[list[dict[str, Any]], float]:
    """One row per offered rate, lowest first, up to the first that does not keep up; and the p99 bound."""
    clients = _Clients(state, metadata, accounts, args.steps, args.size)
    rng = random.Random(args.seed)
    rows = []
    p99_bound_ms: float | None = args.p99_bound_ms
    try:
        # Warm-up at the lowest rate: connections, replica caches. Not reported.
        await open_loop(clients, args.mix, rates[0], min(args.duration, 5.0), args.timeout, rng)
        for rate in rates:
            outcomes = await open_loop(clients, args.mix, rate, args.duration, args.timeout, rng)
            row = summarize(outcomes, rate, args.duration)
            if p99_bound_ms is None:
                p99_bound_ms = args.p99_bound_ms or DEFAULT_P99_BOUND_FACTOR * (row["p50_ms"] or 0.0)
            row["keeps_up"] = keeps_up(row, p99_bound_ms)
            rows.append(row)
            print(f"offered {rate:.2f}/s: {_row_line(row)}", file=sys.stderr)
            if not row["keeps_up"]:
                break
    finally:
        await clients.close()
    return rows, p99_bound_ms or 0.0


async def _soak(
    args: argparse.Namespace, state: ClusterState, home: Path, metadata: Metadata, accounts: list[str]
) -> dict[str, Any]:
    duration_s = args.minutes * 60
    clients = _Clients(state, metadata, accounts, args.steps, args.size)
    samples: list[Sample] = []
    curve = None
    if args.out is not None:
        # Written as it is sampled, so a soak cut short still leaves its curve behind.
        args.out.mkdir(parents=True, exist_ok=True)
        curve = open(args.out / "memory.csv", "w", newline="")  # noqa: SIM115 (closed below)
        csv.writer(curve).writerow(["elapsed_s", "pid", "label", "rss_mb", "private_mb"])
    started = time.monotonic()

    async def sample_memory() -> None:
        while True:
            elapsed = time.monotonic() - started
            # psutil reads /proc synchronously: off the event loop, so arrivals stay on schedule.
            pids = await asyncio.to_thread(cluster_pids, state, home)
            batch = await asyncio.to_thread(sample_rss, pids, elapsed)
            samples.extend(batch)
            if curve is not None:
                csv.writer(curve).writerows(
                    (round(s.elapsed_s, 1), s.pid, s.label, round(s.rss_mb, 2), round(s.private_mb, 2)) for s in batch
                )
                curve.flush()
            print(f"{elapsed:.0f} s: {len(batch)} processes, {sum(s.rss_mb for s in batch):.0f} MB", file=sys.stderr)
            if elapsed >= duration_s:
                return
            await asyncio.sleep(min(args.sample_every, max(0.0, duration_s - elapsed)))

    try:
        sampler = asyncio.create_task(sample_memory())
        outcomes = await open_loop(clients, args.mix, args.rate, duration_s, args.timeout, random.Random(args.seed))
        await sampler
    finally:
        await clients.close()
        if curve is not None:
            curve.close()
    trends = memory_trends(samples, duration_s, args.growth_mb_per_hour, args.growth_fraction_per_hour)
    result = {
        "mode": "soak",
        "mix": args.mix.weights,
        "steps": args.steps,
        "minutes": args.minutes,
        "sample_every_s": args.sample_every,
        "load": summarize(outcomes, args.rate, duration_s),
        "memory_samples": len(samples),
        "growth_rule": (
            f"second-half slope of private memory > max({args.growth_mb_per_hour} MB/h, "
            f"{args.growth_fraction_per_hour:.0%} of first RSS per hour) "
            f"and a fitted second-half rise > {GROWTH_FLOOR_MB} MB"
        ),
        "processes": [asdict(trend) for trend in trends],
        "growing": [f"{t.label} (pid {t.pid})" for t in trends if t.growing],
    }
    if args.out is not None:
        (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
        result["written"] = [str(args.out / "memory.csv"), str(args.out / "summary.json")]
    return result


def _row_line(row: dict[str, Any]) -> str:
    errors = ", ".join(f"{code} {count}" for code, count in row["errors"].items()) or "none"
    return (
        f"achieved {row['achieved_rps']:.2f}/s, p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, "
        f"p99 {row['p99_ms']} ms, errors: {errors}"
    )


def _print_sweep(result: dict[str, Any]) -> None:
    print(
        f"baseline: direct pipeline {result['baseline_direct_images_per_s']:.2f} images/s "
        f"({result['baseline_direct_image_ms']:.1f} ms/image, {result['steps']} steps)"
    )
    print(f"mix: {result['mix']}; {result['duration_s']:.0f} s per rate")
    print(
        f"{'offered/s':>10} {'achieved/s':>11} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'sent':>6} "
        f"{'errors':>7} {'gen x base':>10}  keeps up"
    )
    share = sum(result["mix"].get(k, 0.0) for k in _GENERATING) / sum(result["mix"].values())
    for row in result["rows"]:
        errors = sum(row["errors"].values())
        ratio = row["achieved_rps"] * share / result["baseline_direct_images_per_s"]
        print(
            f"{row['offered_rps']:>10.2f} {row['achieved_rps']:>11.2f} {row['p50_ms'] or 0:>9.1f} "
            f"{row['p95_ms'] or 0:>9.1f} {row['p99_ms'] or 0:>9.1f} {row['sent']:>6} {errors:>7} "
            f"{ratio:>10.2f}  {'yes' if row['keeps_up'] else 'no'} {row['errors'] or ''}"
        )
    knee = result["knee"]
    print(f"knee rule: {result['knee_rule']}")
    if knee is None:
        print("knee: not reached keeping up even at the lowest offered rate")
    else:
        print(
            f"knee: {knee['offered_rps']:.2f} requests/s offered, {knee['achieved_rps']:.2f}/s achieved, "
            f"p50/p95/p99 {knee['p50_ms']}/{knee['p95_ms']}/{knee['p99_ms']} ms; generation throughput "
            f"{result['knee_generation_rps_vs_baseline']:.2f}x the direct pipeline"
        )
    if result["overload"]:
        print(f"overload rule: {result['overload_rule']}")
        print(
            f"{'x knee':>7} {'offered/s':>10} {'achieved/s':>11} {'p99 ms':>9} {'refused':>8} "
            f"{'refusal p99':>12} {'goodput x':>10} {'p99 x':>7}  holds"
        )
        for row in result["overload"]:
            print(
                f"{row['knee_multiple']:>7g} {row['offered_rps']:>10.2f} {row['achieved_rps']:>11.2f} "
                f"{row['p99_ms'] or 0:>9.1f} {row['errors'].get(REFUSAL_CODE, 0):>8} "
                f"{row['refusal_p99_ms'] or 0:>12.1f} {row['goodput_vs_knee']:>10.2f} "
                f"{row['p99_vs_knee'] or 0:>7.2f}  {'yes' if row['holds'] else 'no'} {row['errors'] or ''}"
            )


def _print_soak(result: dict[str, Any]) -> None:
    print(f"soak: {result['minutes']} min at {result['load']['offered_rps']}/s, mix {result['mix']}")
    print(f"load: {_row_line(result['load'])}")
    print(
        f"{'process':<48} {'pid':>7} {'first MB':>9} {'last MB':>9} {'max MB':>9} {'MB/hour':>9} "
        f"{'private first':>13} {'last':>7} {'MB/hour':>9}"
    )
    for p in result["processes"]:
        flag = "  GROWING" if p["growing"] else ""
        print(
            f"{p['label'][:48]:<48} {p['pid']:>7} {p['first_mb']:>9.1f} {p['last_mb']:>9.1f} {p['max_mb']:>9.1f} "
            f"{p['slope_mb_per_hour']:>9.2f} {p['first_private_mb']:>13.1f} {p['last_private_mb']:>7.1f} "
            f"{p['private_slope_mb_per_hour']:>9.2f}{flag}"
        )
    print(f"growth rule: {result['growth_rule']}")
    print("growing: " + (", ".join(result["growing"]) or "none"))
    for path in result.get("written", []):
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
