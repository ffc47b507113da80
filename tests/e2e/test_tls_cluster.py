"""`atelier up` with mutual TLS: every gRPC port speaks TLS only and asks for a client certificate,
and a generation still travels client -> Serve's proxy -> gateway -> control plane (over mutual TLS
too, with the Ray node's certificate) and back.

A cluster of its own (about a minute to start): the session's cluster runs without TLS.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import grpc
import PIL.Image
import pytest

from atelier.launcher import LocalCluster
from atelier.ports import local_cluster_ports
from atelier.settings import ClusterSettings
from atelier.state import ClusterState, load_operator_key
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc, inference_pb2, inference_pb2_grpc
from tests._tls import Certificates, make_certificates
from transport.tls import TlsConfig


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def client_tls(certs: Certificates) -> TlsConfig:
    """What an outside client of the cluster holds: the CA and a client certificate."""
    return TlsConfig(ca_file=certs.ca, client_cert_file=certs.client_cert, client_key_file=certs.client_key)


@pytest.fixture(scope="module")
def tls_settings(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> ClusterSettings:
    # The cluster's processes serve with the server certificate and present the client one.
    tls = TlsConfig(
        cert_file=certs.server_cert,
        key_file=certs.server_key,
        client_ca_file=certs.ca,
        ca_file=certs.ca,
        client_cert_file=certs.client_cert,
        client_key_file=certs.client_key,
    )
    return ClusterSettings(
        home=tmp_path_factory.mktemp("atelier-tls-home"),
        database_url=os.environ.get("ATELIER_TEST_DATABASE_URL") or None,
        tls=tls,
        **local_cluster_ports(),
        demo_credits=20,
    )


@pytest.fixture(scope="module")
def tls_cluster(tls_settings: ClusterSettings) -> Iterator[ClusterState]:
    local = LocalCluster(tls_settings, log=lambda line: print(f"[tls cluster] {line}"))
    try:
        yield local.up()
    finally:
        local.down()


def _metadata(settings: ClusterSettings) -> tuple[tuple[str, str], ...]:
    key = load_operator_key(settings.home.resolve())
    assert key is not None
    return (("authorization", f"Bearer {key}"),)


def test_a_generation_travels_over_mutual_tls_end_to_end(
    tls_cluster: ClusterState, tls_settings: ClusterSettings, client_tls: TlsConfig
) -> None:
    assert tls_cluster.demo_account_id is not None
    metadata = _metadata(tls_settings)
    request = inference_pb2.GenerateRequest(
        account_id=tls_cluster.demo_account_id, prompt="a kite", seed=1, steps=3, width=64, height=64
    )
    with client_tls.channel(tls_cluster.serve_grpc_address) as channel:
        response = inference_pb2_grpc.InferenceStub(channel).Generate(request, metadata=metadata, timeout=120)
    assert PIL.Image.open(io.BytesIO(response.images[0].png)).size == (64, 64)
    with client_tls.channel(tls_cluster.control_plane_address) as channel:
        balance = (
            control_plane_pb2_grpc.ControlPlaneStub(channel)
            .GetBalance(control_plane_pb2.GetBalanceRequest(account_id=tls_cluster.demo_account_id), metadata=metadata)
            .balance
        )
    assert balance.available == 20 - response.credits_charged


@pytest.mark.parametrize("port", ["control_plane_address", "serve_grpc_address"])
def test_plaintext_and_certificate_less_clients_are_refused(
    tls_cluster: ClusterState, certs: Certificates, port: str
) -> None:
    address = getattr(tls_cluster, port)
    for channel in (grpc.insecure_channel(address), TlsConfig(ca_file=certs.ca).channel(address)):
        with channel, pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_cli_dials_with_the_tls_variables(
    tls_cluster: ClusterState, tls_settings: ClusterSettings, client_tls: TlsConfig
) -> None:
    env = {**os.environ, "ATELIER_HOME": str(tls_settings.home), **client_tls.to_env()}

    def atelier(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "atelier.cli", *args], env=env, capture_output=True, text=True, timeout=120
        )

    status = atelier("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["healthy"] is True
    keys = atelier("keys", "list", "--json")
    assert keys.returncode == 0, keys.stdout + keys.stderr
    assert "operator" in {key["name"] for key in json.loads(keys.stdout)["keys"]}
