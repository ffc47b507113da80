"""Serve's gRPC proxy server with atelier's TLS callback: built by Ray's own `start_grpc_server`.

Starting a second Ray cluster with TLS costs minutes on CI's two cores, so this drives the exact
code a proxy process runs: Serve's start-up callback (`install_proxy_tls`), then Ray 2.60's
`start_grpc_server` (which binds the port first and calls our servicer hook after), with a real
grpc.aio server and real TLS clients. Only the replica routing is replaced by a handler that
answers FAILED_PRECONDITION "reached", which proves the call got through the handshake.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from ray.serve._private import default_impl
from ray.serve._private.grpc_util import start_grpc_server
from ray.serve.config import gRPCOptions

from inference.grpc_proxy import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE, install_proxy_tls, proxy_binds_with_tls
from protos.atelier.v1 import inference_pb2
from protos.atelier.v1.inference_pb2_grpc import InferenceStub
from tests._tls import Certificates, make_certificates
from transport.tls import ENV_VARS, TlsConfig


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def restore_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undoes the callback's change to Ray after each test, and starts without TLS variables."""
    monkeypatch.setattr(default_impl, "add_grpc_address", default_impl.add_grpc_address)
    for variable in ENV_VARS.values():
        monkeypatch.delenv(variable, raising=False)
    yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _handler_factory(service_method: str, streaming_type: Any) -> Any:
    async def reached(request: bytes, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"reached {service_method}")

    return reached


async def _list_models_through_proxy(client: TlsConfig | None) -> tuple[grpc.StatusCode, str]:
    """Starts the proxy's gRPC server as Serve does, calls ListModels once, stops it."""
    port = _free_port()
    options = gRPCOptions(port=port, grpc_servicer_functions=["inference.grpc_proxy.add_inference_servicer_to_server"])
    task, server = await start_grpc_server(_handler_factory, options, event_loop=asyncio.get_running_loop())
    address = f"127.0.0.1:{port}"
    channel = client.aio_channel(address) if client is not None else grpc.aio.insecure_channel(address)
    try:
        await InferenceStub(channel).ListModels(inference_pb2.ListModelsRequest(), timeout=10)
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    finally:
        await channel.close()
        await server.stop(None)
        task.cancel()


def _set_tls_env(monkeypatch: pytest.MonkeyPatch, certs: Certificates, *, mutual: bool) -> None:
    monkeypatch.setenv("ATELIER_TLS_CERT_FILE", str(certs.server_cert))
    monkeypatch.setenv("ATELIER_TLS_KEY_FILE", str(certs.server_key))
    if mutual:
        monkeypatch.setenv("ATELIER_TLS_CLIENT_CA_FILE", str(certs.ca))


def test_without_tls_variables_the_callback_leaves_the_port_plaintext() -> None:
    assert install_proxy_tls() == []
    assert not proxy_binds_with_tls()
    code, details = asyncio.run(_list_models_through_proxy(None))
    assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION, "reached /atelier.v1.Inference/ListModels")


def test_with_tls_the_proxy_answers_tls_clients_only(monkeypatch: pytest.MonkeyPatch, certs: Certificates) -> None:
    _set_tls_env(monkeypatch, certs, mutual=False)
    assert install_proxy_tls() == []
    assert proxy_binds_with_tls()
    assert (
        asyncio.run(_list_models_through_proxy(TlsConfig(ca_file=certs.ca)))[0] == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert asyncio.run(_list_models_through_proxy(None))[0] == grpc.StatusCode.UNAVAILABLE


def test_with_mutual_tls_a_client_needs_a_certificate_of_the_client_ca(
    monkeypatch: pytest.MonkeyPatch, certs: Certificates
) -> None:
    _set_tls_env(monkeypatch, certs, mutual=True)
    install_proxy_tls()
    with_cert = TlsConfig(ca_file=certs.ca, client_cert_file=certs.client_cert, client_key_file=certs.client_key)
    assert asyncio.run(_list_models_through_proxy(with_cert))[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert asyncio.run(_list_models_through_proxy(TlsConfig(ca_file=certs.ca)))[0] == grpc.StatusCode.UNAVAILABLE


def test_tls_without_the_callback_fails_the_proxy_instead_of_serving_plaintext(
    monkeypatch: pytest.MonkeyPatch, certs: Certificates
) -> None:
    _set_tls_env(monkeypatch, certs, mutual=False)
    with pytest.raises(RuntimeError, match=re.escape(f"{PROXY_CALLBACK_VARIABLE}={PROXY_CALLBACK}")):
        asyncio.run(_list_models_through_proxy(TlsConfig(ca_file=certs.ca)))
