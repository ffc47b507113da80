"""`TlsConfig`: which settings make sense together, and one-line errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._tls import Certificates, make_certificates
from transport.tls import TlsConfig, TlsConfigError


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


def test_nothing_set_means_plaintext_everywhere() -> None:
    config = TlsConfig.from_env({})
    assert (config.server_enabled, config.client_enabled, config.mutual) == (False, False, False)


def test_the_variables_build_a_mutual_tls_config_that_round_trips(certs: Certificates) -> None:
    environ = {
        "ATELIER_TLS_CERT_FILE": str(certs.server_cert),
        "ATELIER_TLS_KEY_FILE": str(certs.server_key),
        "ATELIER_TLS_CLIENT_CA_FILE": str(certs.ca),
        "ATELIER_TLS_CA_FILE": str(certs.ca),
        "ATELIER_TLS_CLIENT_CERT_FILE": str(certs.client_cert),
        "ATELIER_TLS_CLIENT_KEY_FILE": str(certs.client_key),
        "ATELIER_TLS_SERVER_NAME": "localhost",
    }
    config = TlsConfig.from_env(environ)
    assert (config.server_enabled, config.client_enabled, config.mutual) == (True, True, True)
    assert config.to_env() == environ


def test_a_ca_alone_makes_clients_use_tls(certs: Certificates) -> None:
    config = TlsConfig(ca_file=certs.ca)
    assert config.client_enabled and not config.server_enabled


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cert_file": "server_cert"}, "set both ATELIER_TLS_CERT_FILE and ATELIER_TLS_KEY_FILE, or neither"),
        (
            {"client_cert_file": "client_cert", "ca_file": "ca"},
            "set both ATELIER_TLS_CLIENT_CERT_FILE and ATELIER_TLS_CLIENT_KEY_FILE, or neither",
        ),
        ({"client_ca_file": "ca"}, "ATELIER_TLS_CLIENT_CA_FILE needs ATELIER_TLS_CERT_FILE"),
        (
            {"client_cert_file": "client_cert", "client_key_file": "client_key"},
            "ATELIER_TLS_CLIENT_CERT_FILE needs ATELIER_TLS_CA_FILE",
        ),
    ],
)
def test_settings_without_their_partner_are_refused(
    certs: Certificates, settings: dict[str, str], message: str
) -> None:
    with pytest.raises(TlsConfigError, match=message):
        TlsConfig(**{name: getattr(certs, attribute) for name, attribute in settings.items()})  # type: ignore[arg-type]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError) as caught:
        TlsConfig(ca_file=tmp_path / "nope.crt")
    assert str(caught.value) == f"ATELIER_TLS_CA_FILE: {tmp_path / 'nope.crt'} does not exist"


def test_a_file_that_is_not_pem_is_refused(certs: Certificates, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TlsConfigError, match="holds no PEM certificate"):
        TlsConfig(cert_file=junk, key_file=certs.server_key)
    with pytest.raises(TlsConfigError, match="holds no PEM private key"):
        TlsConfig(cert_file=certs.server_cert, key_file=junk)


def test_a_key_of_another_certificate_is_refused(certs: Certificates) -> None:
    with pytest.raises(TlsConfigError, match="is not the key of the certificate in ATELIER_TLS_CERT_FILE"):
        TlsConfig(cert_file=certs.server_cert, key_file=certs.client_key)
