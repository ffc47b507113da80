"""What of a local cluster is healthy: the checks behind `atelier status` and `atelier up`.

Each component is checked on its own, all at once, each within a few seconds, so a whole report
takes at most about `CHECK_TIMEOUT_S` whatever is down:

- database: the embedded PostgreSQL answers `SELECT 1` (an external one, `ATELIER_DATABASE_URL`,
  is judged by the control plane, whose health follows its database);
- control plane: its process is alive and its health check answers SERVING (NOT_SERVING while
  its database is unreachable);
- Ray: the head's GCS port accepts connections;
- Serve: the `atelier` application is RUNNING (the Ray dashboard's REST API) and the gRPC proxy's
  health answers SERVING (the gateway says NOT_SERVING while no pool has a running replica);
- pools: each model pool's running replicas against Serve's target, and the models it serves
  (left out when the dashboard does not answer in time).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atelier._processes import health_status, is_running
from atelier.settings import ClusterSettings
from atelier.state import ClusterState

CHECK_TIMEOUT_S = 3.0
"""Longest a health, database or port check waits for an answer, in seconds."""
SERVE_STATUS_TIMEOUT_S = 7.0
"""Longest the Ray dashboard may take to report Serve's applications (it asks Serve's controller,
which a busy head answers slowly); with the other checks running meanwhile, a report stays under 10 s."""

APP_NAME = "atelier"
"""The Serve application `atelier up` deploys (`inference.app.APP_NAME`, not imported: it pulls in Ray)."""
POOL_DEPLOYMENT_PREFIX = "DiffusionModel-"
"""A pool's Serve deployment is this prefix and the pool's name (`inference.app.pool_deployment_name`)."""
_CONTROL_PLANE_SERVICE = "atelier.v1.ControlPlane"


@dataclass(frozen=True)
class Check:
    """One component's verdict."""

    ok: bool
    detail: str
    """What was seen, for a person: "SERVING", "not running", "connection refused", ..."""


@dataclass(frozen=True)
class PoolHealth:
    """One model pool (a Serve deployment of `DiffusionModel` replicas)."""

    name: str
    running: int
    """Replicas serving requests now."""
    target: int
    """Replicas Serve (its autoscaler, or the fixed count) wants."""
    models: list[str]
    """Models the pool serves."""

    @property
    def ok(self) -> bool:
        """A pool is healthy while some replica runs, or when none is wanted (scaled to zero)."""
        return self.running > 0 or self.target == 0


@dataclass(frozen=True)
class ClusterHealth:
    database: Check
    control_plane: Check
    ray: Check
    serve: Check
    pools: list[PoolHealth] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        components = (self.database, self.control_plane, self.ray, self.serve)
        return all(c.ok for c in components) and all(p.ok for p in self.pools)

    def to_json(self) -> dict[str, Any]:
        """The `atelier status --json` object."""
        return {
            "healthy": self.healthy,
            **{
                name: {"ok": check.ok, "detail": check.detail}
                for name, check in (
                    ("database", self.database),
                    ("control_plane", self.control_plane),
                    ("ray", self.ray),
                    ("serve", self.serve),
                )
            },
            "pools": [
                {"name": p.name, "running": p.running, "target": p.target, "models": p.models, "ok": p.ok}
                for p in self.pools
            ],
        }


def check_cluster(settings: ClusterSettings, state: ClusterState) -> ClusterHealth:
    """Checks every component of the cluster `state` describes, concurrently."""
    home = settings.home.resolve()
    with ThreadPoolExecutor(max_workers=6, thread_name_prefix="atelier-health") as workers:
        control_plane = workers.submit(check_control_plane, settings, state)
        ray = workers.submit(check_ray, state.ray_address)
        serve_details = workers.submit(_serve_details, state.ray_dashboard_url)
        proxy = workers.submit(health_status, state.serve_grpc_address, "", CHECK_TIMEOUT_S, settings.tls)
        database = workers.submit(check_database, home, state, control_plane)
        models = workers.submit(_models_by_pool, settings, state)
        ray_check = ray.result()
        serve, pools = (
            _serve_and_pools(serve_details.result(), proxy.result(), models.result())
            if ray_check.ok
            else (Check(ok=False, detail="Ray is down"), [])
        )
        return ClusterHealth(
            database=database.result(), control_plane=control_plane.result(), ray=ray_check, serve=serve, pools=pools
        )


def check_ray(address: str) -> Check:
    """Whether the Ray head's GCS port accepts connections."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CHECK_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        return Check(ok=False, detail=f"the Ray head at {address} does not answer ({error})")
    return Check(ok=True, detail="head answers")


def check_control_plane(settings: ClusterSettings, state: ClusterState) -> Check:
    if state.control_plane_pid is not None and not is_running(state.control_plane_pid):
        return Check(ok=False, detail="not running")
    status = health_status(state.control_plane_address, _CONTROL_PLANE_SERVICE, CHECK_TIMEOUT_S, settings.tls)
    return Check(ok=status == "SERVING", detail=status)


def check_database(home: Path, state: ClusterState, control_plane: Any) -> Check:
    """The embedded server's own answer; for an external database, what the control plane says
    (`control_plane`: the future of its check)."""
    if not state.embedded_database:
        verdict: Check = control_plane.result()
        return Check(ok=verdict.ok, detail=f"external, judged by the control plane: {verdict.detail}")
    import psycopg

    from control_plane.db.embedded import EmbeddedPostgres

    url = EmbeddedPostgres(home / "postgres").url()
    if url is None:
        return Check(ok=False, detail="embedded PostgreSQL is not running")
    try:
        with psycopg.connect(url, connect_timeout=int(CHECK_TIMEOUT_S)) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        return Check(ok=False, detail=f"embedded PostgreSQL does not answer: {type(error).__name__}")
    return Check(ok=True, detail="embedded PostgreSQL answers")


def _serve_details(dashboard_url: str) -> dict[str, Any] | str:
    """Serve's status from the Ray dashboard's REST API, or why it could not be read."""
    try:
        url = f"{dashboard_url}/api/serve/applications/"
        with urllib.request.urlopen(url, timeout=SERVE_STATUS_TIMEOUT_S) as reply:
            details: dict[str, Any] = json.loads(reply.read())
            return details
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return f"Serve's status at {dashboard_url} did not answer ({reason})"


def _serve_and_pools(
    details: dict[str, Any] | str, proxy_status: str, models: dict[str, list[str]]
) -> tuple[Check, list[PoolHealth]]:
    if isinstance(details, str):
        # The dashboard can be slow on a busy head: the gRPC proxy's health still says whether the
        # gateway has a pool with a running replica; only the per-pool figures are missing.
        return Check(ok=proxy_status == "SERVING", detail=f"gRPC proxy {proxy_status}; {details}"), []
    application = (details.get("applications") or {}).get(APP_NAME)
    if application is None:
        return Check(ok=False, detail=f"no {APP_NAME!r} application is deployed"), []
    app_status = str(application.get("status"))
    serve = Check(
        ok=app_status == "RUNNING" and proxy_status == "SERVING",
        detail=f"application {app_status}, gRPC proxy {proxy_status}",
    )
    pools = []
    for name, deployment in sorted((application.get("deployments") or {}).items()):
        if not name.startswith(POOL_DEPLOYMENT_PREFIX):
            continue
        replicas = deployment.get("replicas") or []
        pool = name.removeprefix(POOL_DEPLOYMENT_PREFIX)
        pools.append(
            PoolHealth(
                name=pool,
                running=sum(1 for r in replicas if r.get("state") == "RUNNING"),
                target=int(deployment.get("target_num_replicas") or 0),
                models=models.get(pool, []),
            )
        )
    return serve, pools


def _models_by_pool(settings: ClusterSettings, state: ClusterState) -> dict[str, list[str]]:
    """The models each pool serves, as the gateway's ListModels says; empty when it does not answer
    (Serve's REST answer does not hold a deployment's arguments)."""
    import grpc

    from protos.atelier.v1 import inference_pb2, inference_pb2_grpc

    with settings.tls.channel(state.serve_grpc_address) as channel:
        try:
            listed = inference_pb2_grpc.InferenceStub(channel).ListModels(
                inference_pb2.ListModelsRequest(), timeout=CHECK_TIMEOUT_S
            )
        except grpc.RpcError:
            return {}
    models: dict[str, list[str]] = {}
    for model in listed.models:
        models.setdefault(model.pool, []).append(model.name)
    return models
