"""`atelier up` whose Serve application cannot deploy: one line naming the model and the cause, the
details in the log, exit 1, and nothing left running (a cluster of this test's own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from atelier._processes import is_running
from atelier.ports import local_cluster_ports
from atelier.state import ClusterState
from control_plane.db.embedded import EmbeddedPostgres

_PORT_VARIABLES = {
    "control_plane_port": "ATELIER_CONTROL_PLANE_PORT",
    "control_plane_metrics_port": "ATELIER_CONTROL_PLANE_METRICS_PORT",
    "serve_grpc_port": "ATELIER_SERVE_GRPC_PORT",
    "serve_http_port": "ATELIER_SERVE_HTTP_PORT",
    "ray_port": "ATELIER_RAY_PORT",
    "ray_dashboard_port": "ATELIER_RAY_DASHBOARD_PORT",
    "gateway_grpc_port": "ATELIER_GATEWAY_GRPC_PORT",
}


def test_a_model_that_cannot_load_fails_up_in_one_line_and_leaves_nothing_running(tmp_path: Path) -> None:
    home = tmp_path / "home"
    serve_config = tmp_path / "serve.json"
    serve_config.write_text(json.dumps({"models": [{"name": "broken", "source": str(tmp_path / "no-checkpoint")}]}))
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("ATELIER_DATABASE_URL", "RAY_ADDRESS")},
        "ATELIER_HOME": str(home),
        "ATELIER_SERVE_CONFIG": str(serve_config),
        **{_PORT_VARIABLES[name]: str(port) for name, port in local_cluster_ports().items()},
    }
    started: list[int] = []
    try:
        up = subprocess.run(
            [sys.executable, "-m", "atelier.cli", "up"], env=env, capture_output=True, text=True, timeout=600
        )
        pids = [int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in up.stdout.splitlines() if "(pid " in line]
        started += pids
        assert up.returncode == 1, up.stdout + up.stderr
        assert "Traceback" not in up.stdout + up.stderr, up.stderr
        error = up.stderr.strip().splitlines()[-1]
        assert error.startswith("error: serve: model broken failed to deploy: ValueError: "), up.stderr
        assert "no-checkpoint' is not an existing directory" in error, error
        log = home / "logs" / "serve-deploy.log"
        assert error.endswith(f"see {log}") and "DiffusionModel-broken" in log.read_text()

        assert len(pids) == 2, up.stdout  # the control plane and the Ray head were started ...
        assert not any(is_running(pid) for pid in pids), "a process of the failed start still runs"
        assert ClusterState.load(home) is None  # ... and stopped, with the database
        assert not EmbeddedPostgres(home / "postgres").is_running()
    finally:
        subprocess.run([sys.executable, "-m", "atelier.cli", "down"], env=env, capture_output=True, timeout=300)
