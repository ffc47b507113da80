"""`ATELIER_DIRECT_INGRESS` and `ATELIER_GATEWAY_GRPC_PORT`: read and checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.ports import local_cluster_ports
from atelier.settings import ClusterSettings, SettingsError
from inference.serve_environment import direct_ingress_environment
from tests._tls import make_certificates
from transport.tls import TlsConfig


def test_off_by_default_and_clients_use_the_proxy() -> None:
    settings = ClusterSettings.from_env({})
    assert settings.direct_ingress is False
    assert settings.ingress_grpc_address == settings.serve_grpc_address == "127.0.0.1:9000"


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("0", False), ("off", False)])
def test_the_switch_and_the_port_are_read_from_the_environment(value: str, expected: bool) -> None:
    settings = ClusterSettings.from_env({"ATELIER_DIRECT_INGRESS": value, "ATELIER_GATEWAY_GRPC_PORT": "47300"})
    assert settings.direct_ingress is expected
    assert (settings.gateway_grpc_port, settings.gateway_http_port) == (47300, 47301)
    assert settings.ingress_grpc_address == ("127.0.0.1:47300" if expected else "127.0.0.1:9000")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"ATELIER_DIRECT_INGRESS": "maybe"}, "ATELIER_DIRECT_INGRESS: must be 1 or 0"),
        ({"ATELIER_GATEWAY_GRPC_PORT": "x"}, "ATELIER_GATEWAY_GRPC_PORT: must be an integer"),
        ({"ATELIER_GATEWAY_GRPC_PORT": "65535"}, "gateway_grpc_port: must be a TCP port in [1, 65534]"),
        ({"ATELIER_DIRECT_INGRESS": "1", "RAY_ADDRESS": "10.0.0.1:6379"}, "unset RAY_ADDRESS"),
        (
            {"ATELIER_DIRECT_INGRESS": "1", "ATELIER_GATEWAY_GRPC_PORT": "8999"},
            "gateway_grpc_port: 8999 and the next port must not be another port",
        ),
    ],
)
def test_malformed_or_conflicting_values_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        ClusterSettings.from_env(environ)
    assert message in str(raised.value)


def test_server_tls_is_refused_with_direct_ingress(tmp_path: Path) -> None:
    """The Gateway's own port would be plaintext: fail closed rather than serve it."""
    certs = make_certificates(tmp_path)
    tls = TlsConfig(cert_file=certs.server_cert, key_file=certs.server_key)
    with pytest.raises(SettingsError, match="not supported with server TLS"):
        ClusterSettings(direct_ingress=True, tls=tls)
    assert ClusterSettings(direct_ingress=False, tls=tls).tls.server_enabled


def test_test_clusters_get_a_free_gateway_port_pair() -> None:
    settings = ClusterSettings(**local_cluster_ports(), direct_ingress=True)
    assert settings.gateway_grpc_port not in (settings.serve_grpc_port, settings.control_plane_port)


def test_the_ray_environment_pins_the_gateway_to_its_ports() -> None:
    assert direct_ingress_environment(47300, 47301) == {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "47300",
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": "47301",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "47301",
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "47302",
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
    }
    with pytest.raises(ValueError):
        direct_ingress_environment(47300, 47300)
