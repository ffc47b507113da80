"""The control plane's port with TLS and mutual TLS: who gets an answer and who does not."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.bootstrap import ControlPlaneDeps
from control_plane.clock import ManualClock
from control_plane.config import ControlPlaneConfig
from control_plane.db.pool import Pool
from control_plane.entrypoints.server import add_listen_port, build_server, wait_until_serving
from control_plane.policy import PolicyRegistry
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests._tls import Certificates, make_certificates
from tests.integration.control_plane._support import REPO_ROOT, Caller
from transport.tls import TlsConfig


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(  # type: ignore[no-untyped-def]
    config: ControlPlaneConfig,
    pool: Pool,
    blobs: LocalBlobStore,
    clock: ManualClock,
    keys: PostgresKeyStore,
    policies: PolicyRegistry,
):
    """Starts a control-plane server with the given TLS config; yields its address."""

    @contextmanager
    def start(tls: TlsConfig) -> Iterator[str]:
        deps = ControlPlaneDeps(
            pool=pool, blobs=blobs, clock=clock, keys=keys, policies=policies, registry=CollectorRegistry()
        )
        server = build_server(config, deps)
        port = add_listen_port(server, "127.0.0.1:0", tls)
        server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(grace=None)

    return start


def _who_am_i(channel: grpc.Channel, caller: Caller) -> grpc.StatusCode:
    try:
        ControlPlaneStub(channel).WhoAmI(pb.WhoAmIRequest(), metadata=caller.metadata, timeout=10)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


class TestTls:
    def test_a_tls_client_is_answered_and_a_plaintext_one_is_not(
        self,
        tls_server,
        certs: Certificates,
        operator: Caller,  # type: ignore[no-untyped-def]
    ) -> None:
        with tls_server(TlsConfig(cert_file=certs.server_cert, key_file=certs.server_key)) as address:
            with TlsConfig(ca_file=certs.ca).channel(address) as channel:
                assert _who_am_i(channel, operator) == grpc.StatusCode.OK
            with grpc.insecure_channel(address) as channel:
                assert _who_am_i(channel, operator) == grpc.StatusCode.UNAVAILABLE

    def test_a_client_that_does_not_trust_the_servers_ca_is_refused(
        self,
        tls_server,
        certs: Certificates,
        operator: Caller,  # type: ignore[no-untyped-def]
    ) -> None:
        with (
            tls_server(TlsConfig(cert_file=certs.server_cert, key_file=certs.server_key)) as address,
            TlsConfig(ca_file=certs.other_ca).channel(address) as channel,
        ):
            assert _who_am_i(channel, operator) == grpc.StatusCode.UNAVAILABLE

    def test_the_health_wait_dials_with_tls(self, tls_server, certs: Certificates) -> None:  # type: ignore[no-untyped-def]
        with tls_server(TlsConfig(cert_file=certs.server_cert, key_file=certs.server_key)) as address:
            wait_until_serving(address, timeout_s=10, tls=TlsConfig(ca_file=certs.ca))
            with pytest.raises(TimeoutError):
                wait_until_serving(address, timeout_s=1)


class TestMutualTls:
    @pytest.fixture
    def mtls_address(self, tls_server, certs: Certificates) -> Iterator[str]:  # type: ignore[no-untyped-def]
        tls = TlsConfig(cert_file=certs.server_cert, key_file=certs.server_key, client_ca_file=certs.ca)
        with tls_server(tls) as address:
            yield address

    def test_a_client_with_a_certificate_of_the_client_ca_is_answered(
        self, mtls_address: str, certs: Certificates, operator: Caller
    ) -> None:
        client = TlsConfig(ca_file=certs.ca, client_cert_file=certs.client_cert, client_key_file=certs.client_key)
        with client.channel(mtls_address) as channel:
            assert _who_am_i(channel, operator) == grpc.StatusCode.OK

    @pytest.mark.parametrize("with_stranger_cert", [False, True], ids=["no certificate", "another CA's certificate"])
    def test_a_client_without_a_trusted_certificate_is_refused(
        self, mtls_address: str, certs: Certificates, operator: Caller, with_stranger_cert: bool
    ) -> None:
        client = (
            TlsConfig(ca_file=certs.ca, client_cert_file=certs.stranger_cert, client_key_file=certs.stranger_key)
            if with_stranger_cert
            else TlsConfig(ca_file=certs.ca)
        )
        with client.channel(mtls_address) as channel:
            assert _who_am_i(channel, operator) == grpc.StatusCode.UNAVAILABLE


def test_serve_refuses_to_start_with_a_key_that_does_not_match_its_certificate(
    certs: Certificates, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "ATELIER_HOME": str(tmp_path),
        "ATELIER_TLS_CERT_FILE": str(certs.server_cert),
        "ATELIER_TLS_KEY_FILE": str(certs.client_key),
    }
    result = subprocess.run(
        [sys.executable, "-m", "control_plane", "serve"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"configuration error: ATELIER_TLS_KEY_FILE: {certs.client_key} is not the key of the certificate "
        "in ATELIER_TLS_CERT_FILE"
    )
