"""How fast does a pool scale up after a load step? A real multi-node Ray cluster on this machine.

Starts a head node and `--workers` worker nodes (each advertising a fake accelerator and the pool's
label), the control plane and the Serve application with one autoscaled tiny-sd pool (1..workers
replicas, target 1 ongoing request, no upscale delay), waits until it idles at one replica, then starts
`--callers` concurrent callers at once and reports, from that load step:
  decision_s  until Serve has started every new replica (the autoscaler's reaction: the target, <= 15 s)
  ready_s     until every new replica is RUNNING (adds the replica's start: process, model load)
and the time to scale back down once the load stops. Target (DESIGN.md §7): decision within 15 s.

    python benchmarks/autoscaling.py --json        # 2 workers, 1 -> 2 replicas
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from atelier.launcher import LocalCluster, LocalRayNodes
from atelier.ports import local_cluster_ports
from atelier.settings import ClusterSettings
from atelier.state import load_operator_key
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc, inference_pb2, inference_pb2_grpc

DEPLOYMENT = "DiffusionModel-tiny"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="worker nodes, and the pool's max replicas")
    parser.add_argument("--callers", type=int, default=6, help="concurrent callers of the load step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="atelier-bench-autoscaling-"))
    temp_dir = Path(tempfile.mkdtemp(prefix="atl-as-", dir="/tmp"))
    nodes = LocalRayNodes(temp_dir, home / "logs")
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)  # noqa: E731
    try:
        nodes.start("head", head=True, resources={}, num_cpus=1)
        for index in range(args.workers):
            nodes.start(f"worker-{index}", head=False, resources={"fake_gpu": 1, "pool_tiny": 1}, num_cpus=1)
        config = {
            "proxy_location": "HeadOnly",
            "models": [{"name": "tiny-sd", "num_cpus": 0.5}],
            "pools": [
                {
                    "name": "tiny",
                    "models": ["tiny-sd"],
                    "resources": {"fake_gpu": 1, "pool_tiny": 1},
                    "min_replicas": 1,
                    "max_replicas": args.workers,
                    "target_ongoing_requests": 1,
                    "upscale_delay_s": 0,
                    "downscale_delay_s": 5,
                }
            ],
        }
        (home / "serve.json").write_text(json.dumps(config))
        os.environ["ATELIER_SERVE_CONFIG"] = str(home / "serve.json")
        settings = ClusterSettings(home=home, ray_address=nodes.head_address, **local_cluster_ports(), demo_credits=10)
        cluster = LocalCluster(settings, log=log)
        try:
            state = cluster.up()
            result = _measure(state, home, nodes.head_address, args)
        finally:
            cluster.down()
    finally:
        nodes.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>20}  {value}")
    return 0


def _measure(state, home: Path, ray_address: str, args: argparse.Namespace) -> dict[str, float | int]:  # type: ignore[no-untyped-def]
    import ray
    from ray import serve

    ray.init(address=ray_address, logging_level="WARNING", log_to_driver=False)

    def replicas() -> dict[str, int]:
        status = serve.status().applications["atelier"].deployments[DEPLOYMENT]
        return {str(state): count for state, count in status.replica_states.items()}

    key = load_operator_key(home.resolve())
    metadata = (("authorization", f"Bearer {key}"),)
    try:
        with (
            grpc.insecure_channel(state.serve_grpc_address) as serve_channel,
            grpc.insecure_channel(state.control_plane_address) as control_channel,
        ):
            inference = inference_pb2_grpc.InferenceStub(serve_channel)
            account = control_plane_pb2_grpc.ControlPlaneStub(control_channel).CreateAccount(
                control_plane_pb2.CreateAccountRequest(
                    tier=control_plane_pb2.TIER_FREE, birth_date="1990-01-01", initial_credits=100_000
                ),
                metadata=metadata,
            )
            request = inference_pb2.GenerateRequest(
                account_id=account.account.account_id, prompt="a fox", steps=args.steps, width=128, height=128
            )
            _wait(lambda: replicas() == {"RUNNING": 1}, 300)
            stop = threading.Event()

            def caller() -> None:
                while not stop.is_set():
                    with contextlib.suppress(grpc.RpcError):
                        inference.Generate(request, metadata=metadata, timeout=300)

            with ThreadPoolExecutor(args.callers) as pool:
                load_step = time.monotonic()
                for _ in range(args.callers):
                    pool.submit(caller)
                decision_s = _wait(lambda: sum(replicas().values()) >= args.workers, 300) - load_step
                ready_s = _wait(lambda: replicas().get("RUNNING", 0) >= args.workers, 300) - load_step
                stop.set()
            unload = time.monotonic()
            down_s = _wait(lambda: replicas() == {"RUNNING": 1}, 300) - unload
    finally:
        ray.shutdown()
    return {
        "workers": args.workers,
        "callers": args.callers,
        "decision_s": round(decision_s, 2),
        "ready_s": round(ready_s, 2),
        "replica_start_s": round(ready_s - decision_s, 2),
        "scale_down_s": round(down_s, 2),
    }


def _wait(condition: Callable[[], bool], timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the pool did not reach the expected replica count")
        time.sleep(0.2)
    return time.monotonic()


if __name__ == "__main__":
    sys.exit(main())
