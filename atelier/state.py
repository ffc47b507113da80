"""What `atelier up` started, persisted as `state.json` under the cluster's home."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

_STATE_FILE = "state.json"
_OPERATOR_KEY_FILE = "operator.key"


@dataclass
class ClusterState:
    """Processes and addresses of a running local cluster."""

    control_plane_address: str
    serve_grpc_address: str
    """Where clients call `atelier.v1.Inference`: Serve's gRPC proxy, or the Gateway's own port
    with direct ingress (`ATELIER_DIRECT_INGRESS`)."""
    control_plane_metrics_url: str
    ray_address: str
    ray_dashboard_url: str
    ray_metrics_url: str
    """Prometheus endpoint of the Ray head, with Serve's and atelier's inference metrics."""
    embedded_database: bool
    control_plane_pid: int | None = None
    ray_head_pid: int | None = None
    demo_account_id: str | None = None
    serve_proxy_grpc_address: str | None = None
    """Serve's gRPC proxy, which keeps serving with direct ingress; None when it is `serve_grpc_address`."""

    def save(self, home: Path) -> None:
        path = home / _STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2))
        os.replace(temporary, path)

    @classmethod
    def load(cls, home: Path) -> ClusterState | None:
        """The saved state, or None when no cluster was started from `home`."""
        try:
            return cls(**json.loads((home / _STATE_FILE).read_text()))
        except FileNotFoundError:
            return None

    @staticmethod
    def forget(home: Path) -> None:
        (home / _STATE_FILE).unlink(missing_ok=True)


def save_operator_key(home: Path, secret: str) -> None:
    """Writes the operator's admin API key, readable by this user only."""
    path = home / _OPERATOR_KEY_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")


def load_operator_key(home: Path) -> str | None:
    """The operator key `atelier up` created, or None."""
    try:
        return (home / _OPERATOR_KEY_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None
