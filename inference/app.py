"""Builds and deploys the Serve application: one `Gateway` in front of one pool per model."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import gRPCOptions

from inference.config import ModelConfig, ServeConfig
from inference.deployments.diffusion_model import DiffusionModel
from inference.deployments.gateway import Gateway

APP_NAME = "atelier"
# Serve's proxy routes every method of these services to the ingress deployment (Gateway).
GRPC_SERVICER_FUNCTIONS = (
    # Registers atelier.v1.Inference and fixes the proxy losing cancellations of abandoned streams.
    "inference.grpc_proxy.add_inference_servicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
)


def model_deployment_name(model: ModelConfig, config: ServeConfig | None = None) -> str:
    """Serve deployment name of a model's pool, e.g. ``DiffusionModel-tiny-sd``.

    Without `config`, the model's own pool (a model that no pool of `config` names is served by one).
    """
    pool = config.pool_of(model).name if config is not None else model.name
    return pool_deployment_name(pool)


def pool_deployment_name(pool: str) -> str:
    """Serve deployment name of a pool, e.g. ``DiffusionModel-tiny-sd``."""
    return f"DiffusionModel-{pool}"


def build_app(config: ServeConfig) -> Application:
    """The Serve application graph for `config` (not yet running): one deployment per pool."""
    pools = {}
    for pool, models in config.model_pools():
        lead = models[0]  # models of a pool agree on every replica setting (ServeConfig checks)
        options: dict[str, Any] = {
            "name": pool_deployment_name(pool.name),
            "max_ongoing_requests": lead.max_ongoing_requests,
            "max_queued_requests": lead.max_queued_requests,
            "ray_actor_options": {
                "num_cpus": lead.num_cpus,
                "num_gpus": lead.num_gpus,
                "resources": dict(pool.resources),
            },
        }
        autoscaling = pool.autoscaling_config()
        if autoscaling is None:
            options["num_replicas"] = lead.num_replicas
        else:
            options["autoscaling_config"] = autoscaling
        pools[pool.name] = DiffusionModel.options(**options).bind(models, pool, config.model_cache_dir)  # type: ignore[attr-defined]
    return Gateway.bind(config, pools)  # type: ignore[attr-defined]


def app_from_env(args: dict[str, Any]) -> Application:
    """Application builder for `serve run inference.app:app_from_env` and KubeRay's serveConfigV2.

    Serve passes the application's `args`: the Helm chart puts the whole ServeConfig under
    `serve_config` (so a change to the RayService applies at once, without waiting for a
    mounted file to refresh); without it the config comes from `ServeConfig.from_env`.

    Raises:
        ConfigError: the config is invalid; Serve reports the message as a deploy failure.
    """
    values = args.get("serve_config")
    if values is None:
        return build_app(ServeConfig.from_env())
    environ_config = ServeConfig.from_env()
    values = {"model_cache_dir": environ_config.model_cache_dir, **values}
    return build_app(ServeConfig.from_dict(values))


def deploy(config: ServeConfig) -> None:
    """Starts Serve's proxies on the connected Ray cluster and runs the application.

    Returns once every replica is healthy; the application keeps running after the
    calling process exits.
    """
    serve.start(
        proxy_location=config.proxy_location,
        http_options={"host": "127.0.0.1", "port": config.http_port},
        grpc_options=gRPCOptions(port=config.grpc_port, grpc_servicer_functions=list(GRPC_SERVICER_FUNCTIONS)),
    )
    # gRPC ignores the route, but the proxy only routes to applications that have one.
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
