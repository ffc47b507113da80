"""A real multi-node Ray cluster on this machine: a pool autoscales across the worker nodes that carry
its label, and serves two models multiplexed on its replicas.

The cluster: a head node (gateway, proxy; no pool label) and two worker nodes advertising a fake
accelerator and the pool's label, each a separate `ray start --block`
process with ports of its own and one short temp dir (Unix socket paths may not exceed 107 bytes).
The control plane and the Serve application are started by the same launcher as `atelier up`,
pointed at the head with RAY_ADDRESS.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest

from atelier.launcher import LocalRayNodes
from atelier.ports import local_cluster_ports
from atelier.settings import ClusterSettings
from protos.atelier.v1 import inference_pb2
from tests.e2e._clusters import cluster_serving, create_account

POOL = "tiny"
POOL_LABEL = f"pool_{POOL}"
FAKE_ACCELERATOR = "fake_gpu"
DEPLOYMENT = f"DiffusionModel-{POOL}"


def _serve_config() -> dict[str, Any]:
    return {
        "proxy_location": "HeadOnly",
        "models": [
            {"name": "tiny-a", "source": "tiny-sd", "num_cpus": 0.5, "max_ongoing_requests": 4},
            {"name": "tiny-b", "source": "tiny-sd@seed=1", "num_cpus": 0.5, "max_ongoing_requests": 4},
        ],
        "pools": [
            {
                "name": POOL,
                "models": ["tiny-a", "tiny-b"],
                "resources": {FAKE_ACCELERATOR: 1, POOL_LABEL: 1},
                "max_models_per_replica": 1,
                "min_replicas": 1,
                "max_replicas": 2,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 0,
                "downscale_delay_s": 3,
            }
        ],
    }


@pytest.fixture(scope="module")
def multinode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("multinode-home")
    temp_dir = Path(tempfile.mkdtemp(prefix="atl-mn-", dir="/tmp"))
    config_path = home / "serve.json"
    config_path.write_text(json.dumps(_serve_config()))
    nodes = LocalRayNodes(temp_dir, home / "logs")
    try:
        nodes.start("head", head=True, resources={}, num_cpus=1)
        _wait_for_port(nodes.head_address)
        for index in range(2):
            nodes.start(
                f"worker-{POOL}-{index}", head=False, resources={FAKE_ACCELERATOR: 1, POOL_LABEL: 1}, num_cpus=1
            )
        nodes.start("worker-other", head=False, resources={FAKE_ACCELERATOR: 1, "pool_other": 1}, num_cpus=1)
        settings = ClusterSettings(
            home=home, ray_address=nodes.head_address, **local_cluster_ports(), demo_credits=10, start_timeout_s=300
        )
        with cluster_serving(settings, config_path, "multinode") as cluster:
            yield cluster
    finally:
        nodes.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_port(address: str, timeout_s: float = 120) -> None:
    import socket

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"the Ray head did not open {address}"
            time.sleep(0.25)


def _replica_nodes() -> list[dict[str, float]]:
    """Resources of the node of every live replica of the pool (from the GCS actor table)."""
    import ray
    from ray._private import state

    resources = {node["NodeID"]: node["Resources"] for node in ray.nodes() if node["Alive"]}
    actors = state.actors(actor_state_name="ALIVE").values()
    return [
        resources.get(actor["Address"]["NodeID"], {})
        for actor in actors
        if actor["ActorClassName"].startswith("ServeReplica") and DEPLOYMENT in actor["ActorClassName"]
    ]


def _wait_until(condition: Callable[[], bool], timeout_s: float, message: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, message
        time.sleep(0.5)
    return time.monotonic() - started


def test_pool_scales_up_on_its_labelled_nodes_under_load_and_back_down(multinode: dict[str, Any]) -> None:
    assert len(_replica_nodes()) == 1
    account_id = create_account(multinode, 1000)
    stop_load = False

    def caller(seed: int) -> None:
        request = inference_pb2.GenerateRequest(
            account_id=account_id, model="tiny-a", prompt="a fox", steps=20, width=128, height=128, seed=seed
        )
        while not stop_load:
            multinode["inference"].Generate(request, metadata=multinode["metadata"], timeout=300)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(caller, seed) for seed in range(6)]
        try:
            scale_up_s = _wait_until(lambda: len(_replica_nodes()) == 2, 120, "the pool did not scale to 2 replicas")
            print(f"scaled from 1 to 2 replicas {scale_up_s:.1f}s after the load step")
        finally:
            stop_load = True
        for future in futures:
            future.result(timeout=300)
    nodes = _replica_nodes()
    assert all(node.get(POOL_LABEL) == 1 for node in nodes), "replicas run only on nodes labelled for the pool"
    _wait_until(lambda: len(_replica_nodes()) == 1, 120, "the pool did not scale back down to 1 replica")


def test_two_models_multiplexed_on_one_pool_route_to_the_right_weights(multinode: dict[str, Any]) -> None:
    from inference.backends import EagerBackend, GenerationParams
    from inference.models import build_tiny_sd

    models = multinode["inference"].ListModels(inference_pb2.ListModelsRequest(), timeout=30).models
    assert [(m.name, m.pool) for m in models] == [("tiny-a", POOL), ("tiny-b", POOL)]
    account_id = create_account(multinode, 100)
    served = {}
    for name in ("tiny-a", "tiny-b", "tiny-a"):  # one model per replica: the third request reloads tiny-a
        request = inference_pb2.GenerateRequest(account_id=account_id, model=name, prompt="a fox", steps=3, seed=9)
        response = multinode["inference"].Generate(request, metadata=multinode["metadata"], timeout=300)
        served[name] = np.asarray(PIL.Image.open(io.BytesIO(response.images[0].png)), dtype=np.int16)
    params = GenerationParams("a fox", "", 64, 64, 3, 7.5, 9, 1)
    for name, weights_seed in (("tiny-a", 0), ("tiny-b", 1)):
        expected = np.asarray(EagerBackend(build_tiny_sd(weights_seed)).generate(params)[0], dtype=np.int16)
        assert np.abs(served[name] - expected).max() <= 1, f"{name} was not generated by its own weights"
    assert np.abs(served["tiny-a"] - served["tiny-b"]).max() > 1
