"""The local cluster behind `atelier up` and `atelier down`.

`up` starts, in order and each only once healthy: PostgreSQL (embedded unless
`ATELIER_DATABASE_URL` is set), migrations and the operator key, the control plane's
gRPC server, a Ray head node (unless `RAY_ADDRESS` is set) and the Serve application,
then a demo account. Everything runs detached, so `up` returns; `down` stops it all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from atelier._processes import StartError, is_running, spawn_daemon, stop_session, wait_until_serving
from atelier.health import APP_NAME, POOL_DEPLOYMENT_PREFIX, check_cluster, check_control_plane
from atelier.ports import free_port, free_port_block
from atelier.settings import ClusterSettings
from atelier.state import ClusterState, load_operator_key, save_operator_key
from inference.serve_environment import direct_ingress_environment, serve_environment
from protos.atelier.v1 import control_plane_pb2, control_plane_pb2_grpc

Log = Callable[[str], None]

_OPERATOR_TENANT = "default"
# Date of birth of the demo account: an adult, so the age gate lets it generate.
_DEMO_BIRTH_DATE = "1990-01-01"
_DEMO_ACCOUNT_FILE = "demo-account"
_EXCEPTION_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit|Interrupt)\b.*")
# A running control plane's health follows its database within its probe interval (1 s by default).
_CONTROL_PLANE_RECOVERY_S = 5.0


class LocalCluster:
    """One local cluster rooted at `settings.home`."""

    def __init__(self, settings: ClusterSettings, log: Log = print) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self._log = log
        self._logs = self.home / "logs"

    def up(self) -> ClusterState:
        """Starts every component not already running; returns the running cluster's state.

        On a home whose cluster is partly running (the embedded PostgreSQL stopped, the control
        plane or the Ray head dead, the Serve application gone) only what is missing is started,
        and each restart is logged. Should the Serve application fail to deploy, everything is
        stopped again, so nothing is left half-started.

        Raises:
            StartError: a component did not become healthy; its log is named.
        """
        self._check_control_plane_config()
        existing = ClusterState.load(self.home)
        if existing is not None:
            return self._repair(existing)
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            database_url, embedded = self._start_database()
            operator_key = self._bootstrap_database(database_url)
        except Exception as exc:  # the database's own message says what is wrong; the trace adds nothing
            raise StartError(f"database: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        control_plane_pid = self._start_control_plane(database_url)
        ray_address, ray_head_pid = self._start_ray()
        state = ClusterState(
            control_plane_address=self.settings.control_plane_address,
            serve_grpc_address=self.settings.ingress_grpc_address,
            serve_proxy_grpc_address=self.settings.serve_grpc_address if self.settings.direct_ingress else None,
            control_plane_metrics_url=f"http://127.0.0.1:{self.settings.control_plane_metrics_port}/metrics",
            ray_address=ray_address,
            ray_dashboard_url=f"http://127.0.0.1:{self.settings.ray_dashboard_port}",
            ray_metrics_url=f"http://127.0.0.1:{self.settings.ray_metrics_port}/metrics",
            embedded_database=embedded,
            control_plane_pid=control_plane_pid,
            ray_head_pid=ray_head_pid,
        )
        # Saved before the slow steps, so `atelier down` can clean up after a failed start.
        state.save(self.home)
        self._deploy_serve_or_stop_all(state)
        state.demo_account_id = self._ensure_demo_account(operator_key)
        state.save(self.home)
        return state

    def _repair(self, state: ClusterState) -> ClusterState:
        """Starts what of the cluster `state` describes is not healthy, leaving the rest running."""
        health = check_cluster(self.settings, state)
        if health.healthy:
            self._log("atelier is already running")
            return state
        restarted = []
        if not health.database.ok and state.embedded_database:
            self._log(f"database: {health.database.detail}; starting it")
            try:
                self._start_database()
            except Exception as exc:
                raise StartError(f"database: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
            restarted.append("database")
        if not health.control_plane.ok and not self._control_plane_recovers(state):
            self._log(f"control plane: {health.control_plane.detail}; restarting it")
            stop_session(state.control_plane_pid)
            state.control_plane_pid = self._start_control_plane(self._database_url())
            restarted.append("control plane")
        if not health.ray.ok and state.ray_head_pid is not None:
            self._log(f"ray: {health.ray.detail}; restarting the head node")
            stop_session(state.ray_head_pid, timeout_s=60)
            state.ray_address, state.ray_head_pid = self._start_ray()
            restarted.append("ray")
        state.save(self.home)
        if "ray" in restarted or not health.serve.ok:
            self._log(f"serve: {health.serve.detail}; deploying the application")
            self._deploy_serve_or_stop_all(state)
            restarted.append("serve application")
        if restarted:
            self._log(f"restarted: {', '.join(restarted)}")
        else:
            # Only pools without replicas: Serve restarts them itself, and `up` would change nothing.
            self._log("atelier is running; Serve is restarting pools without replicas: see 'atelier status'")
        return state

    def _control_plane_recovers(self, state: ClusterState) -> bool:
        """Whether a live control plane becomes healthy on its own within a few seconds (it reports
        NOT_SERVING until its probe sees a database that was just started)."""
        if not is_running(state.control_plane_pid):
            return False
        deadline = time.monotonic() + _CONTROL_PLANE_RECOVERY_S
        while time.monotonic() < deadline:
            if check_control_plane(self.settings, state).ok:
                return True
            time.sleep(0.25)
        return False

    def _database_url(self) -> str:
        if self.settings.database_url is not None:
            return self.settings.database_url
        from control_plane.db.embedded import EmbeddedPostgres

        url = EmbeddedPostgres(self.home / "postgres").url()
        if url is None:
            raise StartError(f"the embedded PostgreSQL in {self.home / 'postgres'} is not running")
        return url

    def down(self) -> None:
        """Stops whatever `up` started from this home; safe to call when nothing runs."""
        state = ClusterState.load(self.home)
        if state is not None:
            if state.ray_head_pid is not None:
                self._log("stopping Ray (Serve application and head node)")
                stop_session(state.ray_head_pid, timeout_s=60)
            if state.control_plane_pid is not None:
                self._log("stopping the control plane")
                stop_session(state.control_plane_pid)
        if self.settings.database_url is None and (self.home / "postgres").exists():
            from control_plane.db.embedded import EmbeddedPostgres

            self._log("stopping embedded PostgreSQL")
            EmbeddedPostgres(self.home / "postgres").stop()
        ClusterState.forget(self.home)

    def _check_control_plane_config(self) -> None:
        """Refuses to start anything while the control plane's own configuration is invalid.

        The control plane would refuse it too, but only after the database and its process
        started; checked here, the mistake is one line and nothing is left half-started.
        """
        from control_plane.bootstrap import load_policies
        from control_plane.config import ConfigError, ControlPlaneConfig

        try:
            load_policies(ControlPlaneConfig.from_env())
        except ConfigError as exc:
            raise StartError(f"configuration: {exc}") from None

    def _is_healthy(self, state: ClusterState) -> bool:
        from atelier._processes import health_status

        return (
            health_status(state.control_plane_address, tls=self.settings.tls) == "SERVING"
            and health_status(state.serve_grpc_address, tls=self.settings.tls) == "SERVING"
        )

    def _start_database(self) -> tuple[str, bool]:
        if self.settings.database_url is not None:
            self._log("database: ATELIER_DATABASE_URL")
            return self.settings.database_url, False
        from control_plane.db.embedded import EmbeddedPostgres

        self._log(f"database: starting embedded PostgreSQL in {self.home / 'postgres'}")
        return EmbeddedPostgres(self.home / "postgres").start(), True

    def _bootstrap_database(self, database_url: str) -> str:
        """Applies migrations and returns a working operator (admin) key, creating one if needed."""
        from control_plane.api_keys import authenticate, create_api_key, ensure_operator_key
        from control_plane.audit import SYSTEM
        from control_plane.db import apply_migrations, open_pool
        from control_plane.errors import Unauthenticated

        with open_pool(database_url, min_size=1, max_size=2) as pool:
            applied = apply_migrations(pool)
            if applied:
                self._log(f"database: applied migrations {', '.join(applied)}")
            principal, secret = ensure_operator_key(pool, _OPERATOR_TENANT)
            if secret is None:
                saved = load_operator_key(self.home)
                with pool.connection() as conn:
                    try:
                        if saved is not None and authenticate(conn, saved).tenant_id == principal.tenant_id:
                            return saved
                    except Unauthenticated:
                        pass
                    # The database is older than this home (or the key file was lost): issue another.
                    with conn.transaction():
                        _, secret = create_api_key(
                            conn,
                            tenant_id=principal.tenant_id,
                            name="operator",
                            scopes=principal.scopes,
                            actor=SYSTEM,
                            now=datetime.now(UTC),
                        )
        save_operator_key(self.home, secret)
        self._log(f"operator key: written to {self.home / 'operator.key'}")
        return secret

    def _start_control_plane(self, database_url: str) -> int:
        log_path = self._logs / "control-plane.log"
        env = {
            **os.environ,
            **self._master_key_env(),
            **self._signing_env(),
            **self.settings.tls.to_env(),
            "ATELIER_HOME": str(self.home),
            "ATELIER_DATABASE_URL": database_url,
            "ATELIER_CONTROL_PLANE_LISTEN": self.settings.control_plane_address,
            "ATELIER_CONTROL_PLANE_METRICS_PORT": str(self.settings.control_plane_metrics_port),
        }
        pid = spawn_daemon([sys.executable, "-m", "control_plane", "serve"], log_path, env)
        self._log(f"control plane: starting (pid {pid})")
        wait_until_serving(
            "control plane",
            self.settings.control_plane_address,
            self.settings.start_timeout_s,
            log_path,
            lambda: is_running(pid),
            tls=self.settings.tls,
        )
        return pid

    def _master_key_env(self) -> dict[str, str]:
        """The master key the control plane wraps data keys with: as configured, else a key
        file created once under the home (mode 0600)."""
        if os.environ.get("ATELIER_MASTER_KEY") or os.environ.get("ATELIER_MASTER_KEY_FILE"):
            return {}
        from control_plane.crypto import ensure_master_key_file

        path = self.home / "master.key"
        if not path.exists():
            self._log(f"master key: created {path} (keep it safe: without it no content can be read)")
        ensure_master_key_file(path)
        return {"ATELIER_MASTER_KEY_FILE": str(path)}

    def _signing_env(self) -> dict[str, str]:
        """The certificate and key that sign images' C2PA manifests: as configured, else a
        self-signed development pair created once under the home (said to be for development)."""
        if os.environ.get("ATELIER_C2PA_CERT") or os.environ.get("ATELIER_C2PA_KEY"):
            return {}
        from control_plane.provenance.certificates import CHAIN_FILE, KEY_FILE, ensure_development_credentials

        directory = self.home / "c2pa"
        if not (directory / KEY_FILE).exists():
            self._log(
                f"C2PA signing: created a self-signed DEVELOPMENT certificate in {directory}; images it signs "
                "verify only here (set ATELIER_C2PA_CERT and ATELIER_C2PA_KEY in production)"
            )
        ensure_development_credentials(directory, warn=False)
        return {"ATELIER_C2PA_CERT": str(directory / CHAIN_FILE), "ATELIER_C2PA_KEY": str(directory / KEY_FILE)}

    def _start_ray(self) -> tuple[str, int | None]:
        if self.settings.ray_address is not None:
            self._log(f"ray: using the cluster at {self.settings.ray_address}")
            return self.settings.ray_address, None
        ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        num_cpus = self.settings.ray_num_cpus or max(2, os.cpu_count() or 2)
        log_path = self._logs / "ray-head.log"
        argv = [
            ray,
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            f"--port={self.settings.ray_port}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0" if not _has_cuda() else "",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.settings.ray_dashboard_port}",
            f"--object-store-memory={512 * 1024 * 1024}",
            # Ray's other fixed ports, moved beside the GCS port so two clusters can share a machine.
            f"--ray-client-server-port={self.settings.ray_port + 1}",
            f"--dashboard-agent-listen-port={self.settings.ray_port + 2}",
            f"--dashboard-agent-grpc-port={self.settings.ray_port + 3}",
            f"--runtime-env-agent-port={self.settings.ray_port + 4}",
            f"--metrics-export-port={self.settings.ray_metrics_port}",
            f"--temp-dir={self._ray_temp_dir()}",
        ]
        env = {
            # Replicas share a few cores with the gateway and the control plane: OpenMP threads
            # that spin after each parallel region would steal their CPU (~8 ms per request).
            "OMP_WAIT_POLICY": "PASSIVE",
            # A Generate request or reply (8 PNGs) is far below 64 MiB. Larger: RESOURCE_EXHAUSTED.
            **serve_environment(max_message_bytes=64 * 1024 * 1024),
            **os.environ,
            **self._direct_ingress_env(),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **self._proxy_tls_env(),
        }
        pid = spawn_daemon([a for a in argv if a], log_path, env)
        address = f"127.0.0.1:{self.settings.ray_port}"
        self._log(f"ray: starting a head node at {address} (pid {pid})")
        return address, pid

    def _direct_ingress_env(self) -> dict[str, str]:
        """With `direct_ingress`, Serve's settings that make the Gateway replica serve its own gRPC
        port (`gateway_grpc_port`); without, none (a variable inherited from this process is left as is)."""
        if not self.settings.direct_ingress:
            return {}
        return direct_ingress_environment(self.settings.gateway_grpc_port, self.settings.gateway_http_port)

    def _proxy_tls_env(self) -> dict[str, str]:
        """The TLS settings for the Ray node's processes (the gateway dials the control plane
        with them) and, with server TLS, the start-up callback Serve's proxies must run to bind
        a TLS port (see `inference.grpc_proxy`)."""
        if not self.settings.tls.server_enabled:
            return self.settings.tls.to_env()
        from inference.grpc_proxy import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE

        return {**self.settings.tls.to_env(), PROXY_CALLBACK_VARIABLE: PROXY_CALLBACK}

    def _ray_temp_dir(self) -> Path:
        # Ray puts Unix sockets under its temp dir, and their paths may not exceed 107 bytes:
        # a short directory named after this home rather than one inside it.
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"atelier-ray-{digest}"

    def _deploy_serve_or_stop_all(self, state: ClusterState) -> None:
        """Deploys the Serve application; should it fail, stops the whole cluster (nothing is left
        half-started) and raises a one-line `StartError` naming the model and the cause, with the
        details in `logs/serve-deploy.log`."""
        try:
            self._deploy_serve(state.ray_address, state.ray_head_pid)
        except StartError:
            self._log("stopping what was started")
            self.down()
            raise

    def _deploy_serve(self, ray_address: str, ray_head_pid: int | None) -> None:
        # Building the application imports diffusers and transformers, whose import-time warnings
        # (no torchvision, ...) would bury `up`'s own lines; the replicas log theirs to Ray's logs.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import ray
        from ray import serve

        from inference.app import deploy
        from inference.config import ConfigError, ServeConfig

        try:
            config = ServeConfig.from_env(
                {
                    **os.environ,
                    "ATELIER_HOME": str(self.home),
                    "ATELIER_CONTROL_PLANE_ADDRESS": self.settings.control_plane_address,
                    "ATELIER_SERVE_GRPC_PORT": str(self.settings.serve_grpc_port),
                    "ATELIER_SERVE_HTTP_PORT": str(self.settings.serve_http_port),
                }
            )
        except ConfigError as exc:
            raise StartError(f"serve: {exc}") from None
        self._log("serve: deploying the Gateway and model pools " + ", ".join(m.name for m in config.models))
        _connect_ray(
            ray,
            ray_address,
            self.settings.start_timeout_s,
            self._logs / "ray-head.log",
            lambda: ray_head_pid is None or is_running(ray_head_pid),
        )
        # Serve's driver-side INFO lines ("Started Serve in namespace ...") say nothing `up` does not.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        try:
            deploy(config)
        except Exception as exc:  # Serve's RuntimeError names the deployments; their statuses say why
            log_path = self._logs / "serve-deploy.log"
            messages = _failed_deployment_messages(serve)
            with log_path.open("a") as log:
                log.write(f"{datetime.now(UTC).isoformat()} deploy failed: {exc}\n")
                log.writelines(f"{name}: {message}\n" for name, message in messages.items())
            pools = {pool.name: [m.name for m in models] for pool, models in config.model_pools()}
            raise StartError(f"{summarize_deploy_failure(messages, pools, str(exc))}; see {log_path}") from exc
        finally:
            ray.shutdown()
        wait_until_serving(
            "Serve gRPC proxy",
            self.settings.serve_grpc_address,
            self.settings.start_timeout_s,
            self._logs / "ray-head.log",
            tls=self.settings.tls,
        )
        if self.settings.direct_ingress:
            wait_until_serving(
                "the Gateway's direct gRPC ingress",
                self.settings.gateway_grpc_address,
                self.settings.start_timeout_s,
                self._logs / "ray-head.log",
                tls=self.settings.tls,
            )

    def _ensure_demo_account(self, operator_key: str) -> str:
        saved = self.home / _DEMO_ACCOUNT_FILE
        metadata = (("authorization", f"Bearer {operator_key}"),)
        with self.settings.tls.channel(self.settings.control_plane_address) as channel:
            stub = control_plane_pb2_grpc.ControlPlaneStub(channel)
            if saved.exists():
                # The database outlives `down`: reuse the demo account while it still exists.
                account_id = saved.read_text().strip()
                try:
                    stub.GetAccount(control_plane_pb2.GetAccountRequest(account_id=account_id), metadata=metadata)
                    return account_id
                except grpc.RpcError:
                    pass
            response = stub.CreateAccount(
                control_plane_pb2.CreateAccountRequest(
                    tier=control_plane_pb2.TIER_FREE,
                    birth_date=_DEMO_BIRTH_DATE,
                    initial_credits=self.settings.demo_credits,
                ),
                metadata=metadata,
            )
        account_id = str(response.account.account_id)
        saved.write_text(account_id + "\n")
        self._log(f"demo account: {account_id} with {self.settings.demo_credits} credits")
        return account_id


def _failed_deployment_messages(serve: Any) -> dict[str, str]:
    """Status messages of the atelier application's deployments that are not healthy."""
    try:
        application = serve.status().applications.get(APP_NAME)
    except Exception:  # the controller itself is gone: the caller still reports Serve's own error
        return {}
    if application is None:
        return {}
    return {
        name: overview.message
        for name, overview in application.deployments.items()
        if str(getattr(overview.status, "value", overview.status)) != "HEALTHY"
    }


def summarize_deploy_failure(messages: dict[str, str], pool_models: dict[str, list[str]], fallback: str) -> str:
    """One line saying which model failed to deploy and why, from Serve's deployment messages.

    Args:
        messages: Status message of each unhealthy deployment (`DiffusionModel-<pool>`, `Gateway`);
            a replica's failure ends with its exception's traceback.
        pool_models: The models of each pool, by pool name.
        fallback: Serve's own error, used when no message says more.
    """
    for name, message in sorted(messages.items(), key=lambda item: not item[0].startswith(POOL_DEPLOYMENT_PREFIX)):
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        # A traceback's last line is the exception: "FileNotFoundError: no checkpoint at ...".
        cause = next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), lines[-1] if lines else "")
        if name.startswith(POOL_DEPLOYMENT_PREFIX):
            pool = name.removeprefix(POOL_DEPLOYMENT_PREFIX)
            models = ", ".join(pool_models.get(pool, [pool]))
            return f"serve: model {models} failed to deploy: {cause}"
        return f"serve: {name} failed to deploy: {cause}"
    return f"serve: the application failed to deploy: {fallback.splitlines()[0] if fallback else 'no reason given'}"


def _connect_ray(ray, address: str, timeout_s: float, log_path: Path, still_alive: Callable[[], bool]) -> None:  # type: ignore[no-untyped-def]
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    # ray.init blocks for a long time on a head that is still starting: wait for its port first.
    while host and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            if not still_alive():
                raise StartError(f"the Ray head exited during start-up; see {log_path}") from None
            if time.monotonic() > deadline:
                raise StartError(f"Ray did not open {address} within {timeout_s:.0f}s; see {log_path}") from None
            time.sleep(0.25)
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


class LocalRayNodes:
    """Several Ray nodes on this machine (a head and workers), for multi-node tests and benchmarks.

    Each node is a `ray start --block` daemon in a session of its own with ports of its own, all under
    one short temp dir (Unix socket paths may not exceed 107 bytes); `stop` ends each session, never
    `ray stop` (which would stop every Ray instance on the machine).
    """

    def __init__(self, temp_dir: Path, logs: Path) -> None:
        self.temp_dir = temp_dir
        self.logs = logs
        self.pids: list[int] = []
        self.head_address = ""
        self._ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"

    def start(self, name: str, *, head: bool, resources: dict[str, float], num_cpus: float) -> None:
        """Starts a node advertising `resources` and returns once it has joined (the head first).

        Raises:
            StartError: the node exited or did not start within 240 s; its log is named.
        """
        base = free_port_block(8)
        argv = [
            self._ray, "start", "--block", "--disable-usage-stats", f"--num-cpus={num_cpus}", "--num-gpus=0",
            f"--resources={json.dumps(resources)}", f"--temp-dir={self.temp_dir}",
            f"--node-manager-port={base}", f"--object-manager-port={base + 1}",
            f"--dashboard-agent-listen-port={base + 2}", f"--dashboard-agent-grpc-port={base + 3}",
            f"--runtime-env-agent-port={base + 4}", f"--metrics-export-port={base + 5}",
            f"--object-store-memory={128 * 1024 * 1024}",
        ]  # fmt: skip
        if head:
            port = free_port()
            self.head_address = f"127.0.0.1:{port}"
            argv += ["--head", f"--port={port}", "--include-dashboard=false", f"--ray-client-server-port={base + 6}"]
        else:
            argv += [f"--address={self.head_address}"]
        # A loaded 2-core machine starts raylets slowly: give them longer than Ray's default to register.
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "RAY_raylet_start_wait_time_s": "240",
        }
        log_path = self.logs / f"ray-{name}.log"
        pid = spawn_daemon(argv, log_path, env)
        self.pids.append(pid)
        # One node at a time, each once up: starting them together overloads the GCS here.
        deadline = time.monotonic() + 240
        while "Ray runtime started" not in (log_path.read_text(errors="replace") if log_path.exists() else ""):
            if not is_running(pid):
                raise StartError(f"Ray node {name} exited during start-up; see {log_path}")
            if time.monotonic() > deadline:
                raise StartError(f"Ray node {name} did not start within 240s; see {log_path}")
            time.sleep(0.25)

    def stop(self) -> None:
        """Stops every node this object started, workers first."""
        for pid in reversed(self.pids):
            stop_session(pid, timeout_s=30)
