"""Clusters with a serve config of their own, for test modules that need other models than the session's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from atelier.launcher import LocalCluster
from atelier.settings import ClusterSettings
from atelier.state import load_operator_key
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc, inference_pb2_grpc, training_pb2_grpc


@contextmanager
def cluster_serving(settings: ClusterSettings, serve_config: Path, label: str) -> Iterator[dict[str, Any]]:
    """Starts a cluster as `atelier up` does with ``ATELIER_SERVE_CONFIG=serve_config``, connects this process
    to its Ray cluster, and yields its stubs (``inference``, ``control_plane``, ``training``) and operator
    ``metadata``."""
    os.environ["ATELIER_SERVE_CONFIG"] = str(serve_config)
    cluster = LocalCluster(settings, log=lambda line: print(f"[{label}] {line}"))
    import ray

    try:
        try:
            state = cluster.up()
        finally:
            del os.environ["ATELIER_SERVE_CONFIG"]
        ray.init(address=state.ray_address, logging_level="WARNING", log_to_driver=False)
        key = load_operator_key(settings.home.resolve())
        with (
            grpc.insecure_channel(state.serve_grpc_address) as serve_channel,
            grpc.insecure_channel(state.control_plane_address) as control_channel,
        ):
            yield {
                "inference": inference_pb2_grpc.InferenceStub(serve_channel),
                "control_plane": control_plane_pb2_grpc.ControlPlaneStub(control_channel),
                "training": training_pb2_grpc.TrainingDataStub(control_channel),
                "metadata": (("authorization", f"Bearer {key}"),),
            }
    finally:
        ray.shutdown()
        cluster.down()


def create_account(cluster: dict[str, Any], credits: int) -> str:
    """A fresh adult account with `credits`, made by the operator; returns its id."""
    response = cluster["control_plane"].CreateAccount(
        control_plane_pb2.CreateAccountRequest(
            tier=control_plane_pb2.TIER_FREE, birth_date="1990-01-01", initial_credits=credits
        ),
        metadata=cluster["metadata"],
    )
    return str(response.account.account_id)
