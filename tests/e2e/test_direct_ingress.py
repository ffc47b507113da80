"""`atelier up` with `ATELIER_DIRECT_INGRESS`: clients call the Gateway replica's own gRPC server, no
Serve proxy in between, and the proxy's hooks still hold there: malformed bytes are INVALID_ARGUMENT,
a failed stream keeps its rich details and request id, the caller's deadline reaches the gateway, and
a deadline the caller writes into its metadata is not believed.

A cluster of its own (about a minute to start): the session's cluster goes through the proxy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import grpc
import pytest

from atelier.launcher import LocalCluster
from atelier.ports import local_cluster_ports
from atelier.settings import ClusterSettings
from atelier.state import ClusterState, load_operator_key
from inference.deadline import DEADLINE_METADATA, DIRECT_INGRESS, INGRESS_METADATA
from inference.grpc_proxy import UNDECODABLE_DETAILS
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc, inference_pb2, inference_pb2_grpc
from tests.e2e._metrics import wait_for_requests_counted
from tests.e2e._status import bad_request_fields


@pytest.fixture(scope="module")
def direct_settings(tmp_path_factory: pytest.TempPathFactory) -> ClusterSettings:
    return ClusterSettings(
        home=tmp_path_factory.mktemp("atelier-direct-home"),
        database_url=os.environ.get("ATELIER_TEST_DATABASE_URL") or None,
        **local_cluster_ports(),
        direct_ingress=True,
        demo_credits=10,
    )


@pytest.fixture(scope="module")
def direct_cluster(direct_settings: ClusterSettings) -> Iterator[ClusterState]:
    local = LocalCluster(direct_settings, log=lambda line: print(f"[direct cluster] {line}"))
    try:
        yield local.up()
    finally:
        local.down()


@pytest.fixture(scope="module")
def metadata(direct_cluster: ClusterState, direct_settings: ClusterSettings) -> tuple[tuple[str, str], ...]:
    key = load_operator_key(direct_settings.home.resolve())
    assert key is not None
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture(scope="module")
def channel(direct_cluster: ClusterState) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(direct_cluster.serve_grpc_address) as opened:
        yield opened


@pytest.fixture(scope="module")
def inference(channel: grpc.Channel) -> inference_pb2_grpc.InferenceStub:
    return inference_pb2_grpc.InferenceStub(channel)


@pytest.fixture(scope="module")
def account_id(direct_cluster: ClusterState, metadata: tuple[tuple[str, str], ...]) -> str:
    with grpc.insecure_channel(direct_cluster.control_plane_address) as control:
        response = control_plane_pb2_grpc.ControlPlaneStub(control).CreateAccount(
            control_plane_pb2.CreateAccountRequest(
                tier=control_plane_pb2.TIER_FREE, birth_date="1990-01-01", initial_credits=1000
            ),
            metadata=metadata,
        )
    return str(response.account.account_id)


def _small(account_id: str, seed: int) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        account_id=account_id, prompt="a kite", seed=seed, steps=2, width=64, height=64
    )


def test_clients_reach_the_gateway_itself_and_the_proxy_stays_a_fallback(
    direct_cluster: ClusterState, direct_settings: ClusterSettings, inference, metadata, account_id
) -> None:
    assert direct_cluster.serve_grpc_address == f"127.0.0.1:{direct_settings.gateway_grpc_port}"
    assert direct_cluster.serve_proxy_grpc_address == direct_settings.serve_grpc_address
    assert direct_cluster.serve_grpc_address != direct_cluster.serve_proxy_grpc_address

    response = inference.Generate(_small(account_id, 1), metadata=metadata, timeout=120)
    assert response.images and response.images[0].png.startswith(b"\x89PNG")
    messages = list(inference.GenerateStream(_small(account_id, 2), metadata=metadata, timeout=120))
    assert messages[-1].HasField("result") and messages[-1].result.images

    with grpc.insecure_channel(direct_cluster.serve_proxy_grpc_address) as proxy:
        through_proxy = inference_pb2_grpc.InferenceStub(proxy).Generate(
            _small(account_id, 1), metadata=metadata, timeout=120
        )
    assert through_proxy.images and through_proxy.images[0].png.startswith(b"\x89PNG")


def test_undecodable_bytes_are_invalid_argument(channel: grpc.Channel, metadata) -> None:
    generate = channel.unary_unary("/atelier.v1.Inference/Generate")
    stream = channel.unary_stream("/atelier.v1.Inference/GenerateStream")
    for call in (generate, lambda *a, **k: list(stream(*a, **k))):
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\x0a\x05ab", metadata=metadata, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert caught.value.details() == UNDECODABLE_DETAILS


def test_a_failed_stream_keeps_its_rich_error_details(
    direct_cluster: ClusterState, inference, metadata, account_id
) -> None:
    request = inference_pb2.GenerateRequest(account_id=account_id, prompt="a fox", steps=4, width=65)
    with pytest.raises(grpc.RpcError) as raised:
        list(inference.GenerateStream(request, metadata=metadata, timeout=60))
    assert bad_request_fields(raised.value) == ["width"]
    assert dict(raised.value.trailing_metadata() or ()).get("request_id")

    # Through the proxy, a caller claiming to have come directly is not believed: the stream still fails
    # the proxy's way, with its details.
    forged = (*metadata, (INGRESS_METADATA, DIRECT_INGRESS))
    with (
        grpc.insecure_channel(direct_cluster.serve_proxy_grpc_address) as proxy,
        pytest.raises(grpc.RpcError) as raised,
    ):
        list(inference_pb2_grpc.InferenceStub(proxy).GenerateStream(request, metadata=forged, timeout=60))
    assert bad_request_fields(raised.value) == ["width"]


def test_a_deadline_the_caller_writes_is_not_believed(inference, metadata, account_id) -> None:
    """Long past, it would make the model replica drop the request as expired."""
    forged = (*metadata, (DEADLINE_METADATA, f"{time.time() - 3600:.6f}"))
    response = inference.Generate(_small(account_id, 3), metadata=forged, timeout=120)
    assert response.images


def test_a_passed_deadline_is_deadline_exceeded_and_counted_so(
    direct_cluster: ClusterState, inference, metadata, account_id
) -> None:
    request = inference_pb2.GenerateRequest(
        account_id=account_id, prompt="a fox", steps=50, width=512, height=512, num_images=2, seed=9
    )
    with pytest.raises(grpc.RpcError) as raised:
        inference.Generate(request, metadata=metadata, timeout=2.0)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The gateway knows the caller's deadline (stamped on the direct path too): counted as such.
    wait_for_requests_counted(direct_cluster.ray_metrics_url, "Generate", "DEADLINE_EXCEEDED")
