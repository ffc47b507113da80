"""Helpers shared by the benchmarks that drive a real local cluster over gRPC.

They measure the served path against a baseline in the same run; the cluster, the operator's
credentials, funded accounts, the in-process pipeline baseline and the percentile rule are the same for
all of them, so they live here once.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc

from atelier.launcher import LocalCluster
from atelier.ports import local_cluster_ports
from atelier.settings import ClusterSettings
from atelier.state import ClusterState, load_operator_key
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc

PROMPT = "a lighthouse at dusk, oil painting"
"""The prompt every benchmark request sends (tiny-sd's images are noise whatever it says)."""

Metadata = tuple[tuple[str, str], ...]


@contextlib.contextmanager
def local_cluster(home: Path | None) -> Iterator[tuple[ClusterState, Path]]:
    """The cluster `atelier up` started from `home`, or a fresh one in a temporary directory.

    A fresh cluster runs on free ports with the embedded PostgreSQL and the control plane's abuse limits
    off (a benchmark drives one account and key far past a caller's fair share, on purpose), and is
    stopped on exit; a running one is left running, limits and all. Yields its state and its resolved home.
    """
    if home is not None:
        state = ClusterState.load(home.resolve())
        if state is None:
            raise SystemExit(f"no cluster is running from {home}; start one with `atelier up`")
        yield state, home.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as directory, _abuse_limits_off():
        # `ATELIER_DIRECT_INGRESS=1` measures the cluster with direct ingress, as `atelier up` would start it.
        direct_ingress = ClusterSettings.from_env().direct_ingress
        settings = ClusterSettings(home=Path(directory), **local_cluster_ports(), direct_ingress=direct_ingress)
        cluster = LocalCluster(settings, log=lambda line: print(line, file=sys.stderr))
        try:
            yield cluster.up(), settings.home.resolve()
        finally:
            cluster.down()


@contextlib.contextmanager
def _abuse_limits_off() -> Iterator[None]:
    # The launcher hands its environment to the control plane it starts.
    names = ("ATELIER_KEY_RATE_PER_S", "ATELIER_ACCOUNT_RATE_PER_S", "ATELIER_MAX_CONCURRENT_GENERATIONS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "0"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def operator_metadata(home: Path) -> Metadata:
    """gRPC metadata carrying the operator (admin) key `atelier up` saved under `home`."""
    key = load_operator_key(home)
    if key is None:
        raise SystemExit(f"no operator key under {home}")
    return (("authorization", f"Bearer {key}"),)


def create_funded_accounts(
    control_plane_address: str, metadata: Metadata, count: int = 1, credits: int = 10**9
) -> list[str]:
    """Creates `count` adult accounts holding `credits` each, so no benchmark request runs out of credit."""
    with grpc.insecure_channel(control_plane_address) as channel:
        stub = control_plane_pb2_grpc.ControlPlaneStub(channel)
        return [
            stub.CreateAccount(
                control_plane_pb2.CreateAccountRequest(birth_date="1990-01-01", initial_credits=credits),
                metadata=metadata,
            ).account.account_id
            for _ in range(count)
        ]


def direct_generate_caller(home: Path, steps: int, size: int | None = None) -> Callable[[], float]:
    """The baseline: one image from the same model and backend a replica runs, called in this process.

    Same cached weights, same backend and the same torch thread count as a replica (Ray gives a replica
    OMP_NUM_THREADS = its num_cpus); the PNG encoding is included, since callers receive PNGs. `size` is
    the width and height in pixels (the model's default when None). The callable returns the seconds
    from its start to the end of the first denoising step, the baseline of a stream's first progress
    message (the step callback a replica passes is there too).
    """
    import time

    import torch

    from inference.backends import GenerationParams, create_backend
    from inference.config import ServeConfig
    from inference.models import ModelSource, load_pipeline

    model = ServeConfig().default_model
    torch.set_num_threads(max(1, int(model.num_cpus)))
    pipeline = load_pipeline(ModelSource.from_setting(model.source, home / "models"), model.device, "float32")
    backend = create_backend(model.backend, pipeline)
    params = GenerationParams(
        prompt=PROMPT,
        negative_prompt="",
        width=size or model.default_width,
        height=size or model.default_height,
        steps=steps,
        guidance_scale=model.default_guidance_scale,
        seed=1,
        num_images=1,
    )

    def call() -> float:
        started = time.perf_counter()
        first_step: list[float] = []

        def on_step(step: int, total_steps: int) -> bool:
            if not first_step:
                first_step.append(time.perf_counter() - started)
            return True

        image = backend.generate(params, on_step)[0]
        image.save(io.BytesIO(), format="PNG", compress_level=1)
        return first_step[0]

    return call


def percentile(values: Sequence[float], percent: float) -> float:
    """The nearest-rank `percent` percentile of `values` (which must not be empty)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))
    return ordered[index]
