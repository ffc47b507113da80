"""Settings of a local atelier cluster, read once from `ATELIER_*` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from transport.tls import TlsConfig, TlsConfigError

_BOOLEANS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
    "": False,
}


class SettingsError(ValueError):
    """A setting is malformed; the message names it."""


@dataclass(frozen=True)
class ClusterSettings:
    """Where a local cluster keeps its state and which ports it listens on."""

    home: Path = Path(".atelier")
    """State directory (`ATELIER_HOME`): database, blobs, models, logs, keys, state.json."""
    database_url: str | None = None
    """`ATELIER_DATABASE_URL`: an existing PostgreSQL; unset starts an embedded one under `home`."""
    ray_address: str | None = None
    """`RAY_ADDRESS`: an existing Ray cluster; unset starts a local head node."""
    control_plane_port: int = 50051
    """`ATELIER_CONTROL_PLANE_PORT`: the control plane's gRPC port."""
    control_plane_metrics_port: int = 9101
    """`ATELIER_CONTROL_PLANE_METRICS_PORT`: the control plane's Prometheus `/metrics` port."""
    serve_grpc_port: int = 9000
    """`ATELIER_SERVE_GRPC_PORT`: Serve's gRPC proxy, where `atelier.v1.Inference` is served."""
    serve_http_port: int = 8000
    """`ATELIER_SERVE_HTTP_PORT`: Serve's HTTP proxy."""
    direct_ingress: bool = False
    """`ATELIER_DIRECT_INGRESS=1`: clients call the Gateway replica's own gRPC server (on
    `gateway_grpc_port`) instead of going through Serve's proxy, which keeps serving on `serve_grpc_port`.
    Needs the local Ray head (no `RAY_ADDRESS`) and no server TLS."""
    gateway_grpc_port: int = 9001
    """`ATELIER_GATEWAY_GRPC_PORT`: the Gateway replica's own gRPC port with `direct_ingress`; its
    HTTP server (which Serve starts beside it) takes the next port."""
    ray_port: int = 6385
    """`ATELIER_RAY_PORT`: the local Ray head's GCS port (6379 is often Redis); Ray's other ports take the next five."""
    ray_dashboard_port: int = 8265
    """`ATELIER_RAY_DASHBOARD_PORT`: the Ray dashboard; Ray also serves its metrics there."""
    ray_num_cpus: int = 0
    """`ATELIER_RAY_NUM_CPUS`: logical CPUs of the local head; 0 means this machine's count (at least 2)."""
    start_timeout_s: float = 240.0
    """`ATELIER_START_TIMEOUT_S`: how long `atelier up` waits for each component to become healthy."""
    demo_credits: int = 1000
    """Credits granted to the demo account `atelier up` creates."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    """`ATELIER_TLS_*`: certificates of every gRPC port, and how commands dial them (see `transport.tls`)."""

    def __post_init__(self) -> None:
        for name in ("control_plane_port", "serve_grpc_port", "serve_http_port", "ray_port", "ray_dashboard_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise SettingsError(f"{name}: must be a TCP port in [1, 65535], got {port}")
        if not 1 <= self.gateway_grpc_port <= 65534:
            raise SettingsError(
                f"gateway_grpc_port: must be a TCP port in [1, 65534] (the next one is its HTTP port), "
                f"got {self.gateway_grpc_port}"
            )
        if self.direct_ingress:
            self._check_direct_ingress()
        if not 0 <= self.control_plane_metrics_port <= 65535:
            raise SettingsError("control_plane_metrics_port: must be in [0, 65535] (0 turns metrics off)")
        if self.ray_num_cpus < 0:
            raise SettingsError("ray_num_cpus: must be >= 0")
        if self.start_timeout_s <= 0:
            raise SettingsError("start_timeout_s: must be > 0")

    def _check_direct_ingress(self) -> None:
        if self.tls.server_enabled:
            raise SettingsError(
                "ATELIER_DIRECT_INGRESS: not supported with server TLS (ATELIER_TLS_CERT_FILE): the Gateway's "
                "own gRPC port would serve plaintext; unset one of them"
            )
        if self.ray_address is not None:
            raise SettingsError(
                "ATELIER_DIRECT_INGRESS: needs the Ray head `atelier up` starts (Serve reads it from the "
                "environment of `ray start`); unset RAY_ADDRESS"
            )
        taken = {
            self.control_plane_port,
            self.control_plane_metrics_port,
            self.serve_grpc_port,
            self.serve_http_port,
            self.ray_dashboard_port,
            *range(self.ray_port, self.ray_port + 6),
        }
        if {self.gateway_grpc_port, self.gateway_http_port} & taken:
            raise SettingsError(
                f"gateway_grpc_port: {self.gateway_grpc_port} and the next port must not be another port of the cluster"
            )

    @property
    def gateway_http_port(self) -> int:
        """The Gateway replica's own HTTP port with `direct_ingress` (unused by atelier, but Serve starts it)."""
        return self.gateway_grpc_port + 1

    @property
    def gateway_grpc_address(self) -> str:
        return f"127.0.0.1:{self.gateway_grpc_port}"

    @property
    def ingress_grpc_address(self) -> str:
        """Where clients call `atelier.v1.Inference`: the Gateway's own port with `direct_ingress`,
        else Serve's proxy."""
        return self.gateway_grpc_address if self.direct_ingress else self.serve_grpc_address

    @property
    def ray_metrics_port(self) -> int:
        """Where the Ray head exports Prometheus metrics (inference metrics included)."""
        return self.ray_port + 5

    @property
    def control_plane_address(self) -> str:
        return f"127.0.0.1:{self.control_plane_port}"

    @property
    def serve_grpc_address(self) -> str:
        return f"127.0.0.1:{self.serve_grpc_port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ClusterSettings:
        """Reads the settings from the environment; unset variables keep their defaults.

        Raises:
            SettingsError: a variable is not a valid value.
        """
        values: dict[str, object] = {}
        if "ATELIER_HOME" in environ:
            values["home"] = Path(environ["ATELIER_HOME"])
        if environ.get("ATELIER_DATABASE_URL"):
            values["database_url"] = environ["ATELIER_DATABASE_URL"]
        if environ.get("RAY_ADDRESS"):
            values["ray_address"] = environ["RAY_ADDRESS"]
        numbers = {
            "ATELIER_CONTROL_PLANE_PORT": "control_plane_port",
            "ATELIER_CONTROL_PLANE_METRICS_PORT": "control_plane_metrics_port",
            "ATELIER_SERVE_GRPC_PORT": "serve_grpc_port",
            "ATELIER_SERVE_HTTP_PORT": "serve_http_port",
            "ATELIER_GATEWAY_GRPC_PORT": "gateway_grpc_port",
            "ATELIER_RAY_PORT": "ray_port",
            "ATELIER_RAY_DASHBOARD_PORT": "ray_dashboard_port",
            "ATELIER_RAY_NUM_CPUS": "ray_num_cpus",
        }
        for variable, name in numbers.items():
            if variable in environ:
                try:
                    values[name] = int(environ[variable])
                except ValueError:
                    raise SettingsError(f"{variable}: must be an integer, got {environ[variable]!r}") from None
        if "ATELIER_DIRECT_INGRESS" in environ:
            flag = environ["ATELIER_DIRECT_INGRESS"].strip().lower()
            if flag not in _BOOLEANS:
                raise SettingsError(f"ATELIER_DIRECT_INGRESS: must be 1 or 0 (true/false), got {flag!r}")
            values["direct_ingress"] = _BOOLEANS[flag]
        if "ATELIER_START_TIMEOUT_S" in environ:
            try:
                values["start_timeout_s"] = float(environ["ATELIER_START_TIMEOUT_S"])
            except ValueError:
                raise SettingsError("ATELIER_START_TIMEOUT_S: must be a number of seconds") from None
        try:
            values["tls"] = TlsConfig.from_env(environ)
        except TlsConfigError as exc:
            raise SettingsError(str(exc)) from None
        return cls(**values)  # type: ignore[arg-type]
