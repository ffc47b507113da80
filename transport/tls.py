"""TLS and mutual TLS for atelier's gRPC ports and clients, from PEM files named by `ATELIER_TLS_*`.

One frozen config shared by every component, so they agree on what the variables mean: the
control plane's server, Serve's gRPC proxy (`inference.grpc_proxy`), the gateway's channel
to the control plane (`inference.control_plane_client`), and the CLI and launcher. It lives
in `transport`, a package none of the three owns, because neither `control_plane` nor
`inference` may import the other or the CLI.

- `ATELIER_TLS_CERT_FILE` + `ATELIER_TLS_KEY_FILE`: the server's certificate chain and key.
  Set, every gRPC server listens with TLS only, and local clients use TLS too.
- `ATELIER_TLS_CLIENT_CA_FILE`: CA bundle that signs client certificates. Set, servers
  require and verify a client certificate (mutual TLS).
- `ATELIER_TLS_CA_FILE`: CA bundle clients verify servers with (the system's roots when
  unset). Set alone, clients use TLS towards servers elsewhere.
- `ATELIER_TLS_CLIENT_CERT_FILE` + `ATELIER_TLS_CLIENT_KEY_FILE`: the certificate clients
  present to servers that require mutual TLS.
- `ATELIER_TLS_SERVER_NAME`: host name clients expect in the server's certificate, when it
  differs from the address dialled (e.g. a certificate for `localhost` dialled at 127.0.0.1).

The files are checked once, when the config is built: present, readable, PEM of the right
kind, unencrypted keys, and each key matching its certificate. Credentials read the files
again, so a server or channel created after a certificate renewal uses the new files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import grpc

ENV_VARS: Mapping[str, str] = {
    "cert_file": "ATELIER_TLS_CERT_FILE",
    "key_file": "ATELIER_TLS_KEY_FILE",
    "client_ca_file": "ATELIER_TLS_CLIENT_CA_FILE",
    "ca_file": "ATELIER_TLS_CA_FILE",
    "client_cert_file": "ATELIER_TLS_CLIENT_CERT_FILE",
    "client_key_file": "ATELIER_TLS_CLIENT_KEY_FILE",
    "server_name": "ATELIER_TLS_SERVER_NAME",
}
"""The environment variable of each field."""

ChannelOptions = Sequence[tuple[str, Any]]


class TlsConfigError(ValueError):
    """A TLS setting names a file that is missing, unreadable or not what it should be."""


@dataclass(frozen=True)
class TlsConfig:
    """Which PEM files secure atelier's gRPC traffic; all unset means plaintext (the default).

    Build it with `TlsConfig.from_env()` at a process's edge, or directly in tests.
    """

    cert_file: Path | None = None
    """Server certificate chain (PEM). With `key_file`, servers speak TLS only."""

    key_file: Path | None = None
    """Private key of `cert_file` (PEM, unencrypted)."""

    client_ca_file: Path | None = None
    """CA bundle of client certificates (PEM); set, servers require one (mutual TLS)."""

    ca_file: Path | None = None
    """CA bundle clients trust for servers (PEM); the system roots when unset."""

    client_cert_file: Path | None = None
    """Certificate chain clients present for mutual TLS (PEM)."""

    client_key_file: Path | None = None
    """Private key of `client_cert_file` (PEM, unencrypted)."""

    server_name: str | None = None
    """Name clients expect in the server certificate, when it differs from the address dialled."""

    def __post_init__(self) -> None:
        _require_pair(self, "cert_file", "key_file")
        _require_pair(self, "client_cert_file", "client_key_file")
        if self.client_ca_file is not None and self.cert_file is None:
            raise TlsConfigError(
                f"{ENV_VARS['client_ca_file']} needs {ENV_VARS['cert_file']} and {ENV_VARS['key_file']}: "
                "mutual TLS is TLS with client certificates"
            )
        if self.client_cert_file is not None and not self.client_enabled:
            raise TlsConfigError(
                f"{ENV_VARS['client_cert_file']} needs {ENV_VARS['ca_file']} (or {ENV_VARS['cert_file']}): "
                "a client certificate is only sent over TLS"
            )
        if self.server_name is not None and not self.server_name.strip():
            raise TlsConfigError(f"{ENV_VARS['server_name']} must not be blank")
        if self.cert_file is not None and self.key_file is not None:
            _check_key_pair("cert_file", self.cert_file, "key_file", self.key_file)
        if self.client_cert_file is not None and self.client_key_file is not None:
            _check_key_pair("client_cert_file", self.client_cert_file, "client_key_file", self.client_key_file)
        for name in ("client_ca_file", "ca_file"):
            path = getattr(self, name)
            if path is not None:
                _load_certificates(name, path)

    @property
    def server_enabled(self) -> bool:
        """Whether servers listen with TLS."""
        return self.cert_file is not None

    @property
    def mutual(self) -> bool:
        """Whether servers require client certificates."""
        return self.client_ca_file is not None

    @property
    def client_enabled(self) -> bool:
        """Whether clients dial with TLS: a CA to trust is set, or this host's servers use TLS."""
        return self.ca_file is not None or self.cert_file is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for `add_secure_port`; they require client certificates when `mutual`.

        Raises:
            TlsConfigError: TLS is not configured for servers.
        """
        if self.cert_file is None or self.key_file is None:
            raise TlsConfigError(f"server TLS needs {ENV_VARS['cert_file']} and {ENV_VARS['key_file']}")
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=self.client_ca_file.read_bytes() if self.client_ca_file is not None else None,
            require_client_auth=self.client_ca_file is not None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for secure channels: the trusted CA and, if set, the client certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file is not None else None,
            private_key=self.client_key_file.read_bytes() if self.client_key_file is not None else None,
            certificate_chain=self.client_cert_file.read_bytes() if self.client_cert_file is not None else None,
        )

    def add_port(self, server: grpc.Server | grpc.aio.Server, address: str) -> int:
        """Binds `address` on a sync or asyncio server, with TLS when `server_enabled`; returns the port."""
        if self.server_enabled:
            return server.add_secure_port(address, self.server_credentials())
        return server.add_insecure_port(address)

    def channel(self, address: str, options: ChannelOptions = ()) -> grpc.Channel:
        """A blocking channel to `address`, with TLS when `client_enabled`."""
        if self.client_enabled:
            return grpc.secure_channel(address, self.channel_credentials(), options=self._options(options))
        return grpc.insecure_channel(address, options=list(options))

    def aio_channel(self, address: str, options: ChannelOptions = ()) -> grpc.aio.Channel:
        """An asyncio channel to `address`, with TLS when `client_enabled`."""
        if self.client_enabled:
            return grpc.aio.secure_channel(address, self.channel_credentials(), options=self._options(options))
        return grpc.aio.insecure_channel(address, options=list(options))

    def _options(self, options: ChannelOptions) -> list[tuple[str, Any]]:
        extra = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return [*options, *extra]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> TlsConfig:
        """Builds the config from `ATELIER_TLS_*` variables (unset or empty ones stay unset).

        Raises:
            TlsConfigError: A file is missing, unreadable or of the wrong kind, a key does not
                match its certificate, or a setting lacks its partner; the message names the
                variable.
        """
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(ENV_VARS[field.name], "").strip()
            if raw:
                values[field.name] = raw if field.name == "server_name" else Path(raw)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that rebuild this config in a child process."""
        return {ENV_VARS[f.name]: str(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}


def _require_pair(config: TlsConfig, first: str, second: str) -> None:
    if (getattr(config, first) is None) != (getattr(config, second) is None):
        raise TlsConfigError(f"set both {ENV_VARS[first]} and {ENV_VARS[second]}, or neither")


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(f"{ENV_VARS[setting]}: {path} does not exist") from None
    except IsADirectoryError:
        raise TlsConfigError(f"{ENV_VARS[setting]}: {path} is a directory, not a PEM file") from None
    except PermissionError:
        raise TlsConfigError(f"{ENV_VARS[setting]}: {path} is not readable by this user") from None


def _load_certificates(setting: str, path: Path) -> list[Any]:
    from cryptography import x509

    pem = _read(setting, path)
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsConfigError(f"{ENV_VARS[setting]}: {path} holds no PEM certificate") from None
    return certificates


def _check_key_pair(cert_setting: str, cert_path: Path, key_setting: str, key_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    leaf = _load_certificates(cert_setting, cert_path)[0]
    pem = _read(key_setting, key_path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise TlsConfigError(f"{ENV_VARS[key_setting]}: {key_path} is encrypted; give an unencrypted key") from None
    except ValueError:
        raise TlsConfigError(f"{ENV_VARS[key_setting]}: {key_path} holds no PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise TlsConfigError(
            f"{ENV_VARS[key_setting]}: {key_path} is not the key of the certificate in {ENV_VARS[cert_setting]}"
        )
