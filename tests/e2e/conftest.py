"""One real local cluster (embedded PostgreSQL, control plane, Ray head, Serve app) per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from atelier.launcher import LocalCluster
from atelier.ports import local_cluster_ports
from atelier.settings import ClusterSettings
from atelier.state import ClusterState, load_operator_key
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc, inference_pb2_grpc

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("atelier-home")


@pytest.fixture(scope="session")
def cluster_settings(cluster_home: Path) -> ClusterSettings:
    import os

    return ClusterSettings(
        home=cluster_home,
        database_url=os.environ.get("ATELIER_TEST_DATABASE_URL") or None,
        **local_cluster_ports(),
        demo_credits=100,
    )


@pytest.fixture(scope="session")
def cluster(cluster_settings: ClusterSettings) -> Iterator[ClusterState]:
    local = LocalCluster(cluster_settings, log=lambda line: print(f"[cluster] {line}"))
    try:
        yield local.up()
    finally:
        local.down()


@pytest.fixture(scope="session")
def operator_metadata(cluster: ClusterState, cluster_settings: ClusterSettings) -> tuple[tuple[str, str], ...]:
    key = load_operator_key(cluster_settings.home.resolve())
    assert key is not None
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture(scope="session")
def control_plane(cluster: ClusterState) -> Iterator[control_plane_pb2_grpc.ControlPlaneStub]:
    with grpc.insecure_channel(cluster.control_plane_address) as channel:
        yield control_plane_pb2_grpc.ControlPlaneStub(channel)


@pytest.fixture(scope="session")
def inference(cluster: ClusterState) -> Iterator[inference_pb2_grpc.InferenceStub]:
    with grpc.insecure_channel(cluster.serve_grpc_address) as channel:
        yield inference_pb2_grpc.InferenceStub(channel)


@pytest.fixture()
def make_account(control_plane, operator_metadata):  # type: ignore[no-untyped-def]
    """Creates a fresh adult account with the given credits; returns its id."""

    def make(credits: int) -> str:
        response = control_plane.CreateAccount(
            control_plane_pb2.CreateAccountRequest(
                tier=control_plane_pb2.TIER_FREE, birth_date="1990-01-01", initial_credits=credits
            ),
            metadata=operator_metadata,
        )
        return str(response.account.account_id)

    return make


@pytest.fixture()
def balance_of(control_plane, operator_metadata):  # type: ignore[no-untyped-def]
    def balance(account_id: str) -> control_plane_pb2.Balance:
        return control_plane.GetBalance(
            control_plane_pb2.GetBalanceRequest(account_id=account_id), metadata=operator_metadata
        ).balance

    return balance
