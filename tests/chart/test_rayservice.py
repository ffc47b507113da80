"""templates/rayservice.yaml: one KubeRay RayService, a worker group per GPU pool and a Serve deployment
per model, with Serve's gRPC proxy in front."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml
from helm_python import HelmRenderError
from ray.serve.schema import ServeDeploySchema

from inference.app import GRPC_SERVICER_FUNCTIONS
from inference.serve_environment import serve_environment

from ._chart import CHART_DIR, FULLNAME, merged, render, serve_config, serve_deployments, worker_groups
from ._crds import CRD_FILES, KUBERAY_VERSIONS, validate_against_crd

H100_POOL = {
    "name": "h100",
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "gpusPerWorker": 8,
    "gpusPerReplica": 1,
    "minWorkers": 0,
    "maxWorkers": 3,
    "resources": {"requests": {"cpu": "64", "memory": "512Gi"}, "limits": {"memory": "512Gi"}},
}
SDXL_ON_H100 = {
    "name": "sdxl",
    "pool": "h100",
    "numCpus": 4,
    "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 24, "targetOngoingRequests": 1},
    "settings": {
        "source": "/models/sdxl",
        "dtype": "float16",
        "default_width": 1024,
        "default_height": 1024,
        "max_size": 1024,
    },
}


def _with_h100(values: dict[str, Any]) -> dict[str, Any]:
    return {**values, "gpuPools": [*values["gpuPools"], H100_POOL], "models": [*values["models"], SDXL_ON_H100]}


def test_serve_config_is_a_valid_ray_serve_deploy_config(ci_values: dict[str, Any]) -> None:
    ServeDeploySchema.model_validate(serve_config(render(ci_values)))


def test_serves_one_atelier_application_built_by_the_module_level_builder(minimal: dict[str, Any]) -> None:
    (application,) = serve_config(render(minimal))["applications"]

    assert application["name"] == "atelier"
    assert application["import_path"] == "inference.app:app_from_env"
    assert application["runtime_env"]["env_vars"]["ATELIER_SERVE_CONFIG"] == "/etc/atelier/serve/serve-config.json"


def test_hands_the_serve_config_to_the_builder_inline_as_well(minimal: dict[str, Any]) -> None:
    release = render(minimal)
    (application,) = serve_config(release)["applications"]
    mounted = json.loads(release.one("ConfigMap", f"{FULLNAME}-serve-config")["data"]["serve-config.json"])

    assert application["args"] == {"serve_config": mounted}


def test_starts_serves_grpc_proxy_with_the_same_servicers_as_atelier_up(minimal: dict[str, Any]) -> None:
    grpc = serve_config(render(minimal))["grpc_options"]

    # The same hooks as the local launcher, cancellation fix of inference.grpc_proxy included.
    assert grpc == {"port": 9000, "grpc_servicer_functions": list(GRPC_SERVICER_FUNCTIONS)}


def test_exposes_the_grpc_proxy_in_the_serve_service_kuberay_switches_on_upgrades(minimal: dict[str, Any]) -> None:
    spec = render(minimal).one("RayService")["spec"]

    ports = {port["name"]: port["port"] for port in spec["serveService"]["spec"]["ports"]}
    assert ports == {"serve": 8000, "serve-grpc": 9000}
    for group in [spec["rayClusterConfig"]["headGroupSpec"], *spec["rayClusterConfig"]["workerGroupSpecs"]]:
        container_ports = {p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
        assert container_ports["serve"] == 8000  # KubeRay health-checks the proxy on the `serve` port (HTTP)
        assert container_ports["serve-grpc"] == 9000
        assert container_ports["metrics"] == 8080


def test_upgrades_with_a_new_cluster_so_that_cluster_changes_have_no_downtime(minimal: dict[str, Any]) -> None:
    assert render(minimal).one("RayService")["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_adds_a_worker_group_when_a_pool_is_added_to_gpuPools(minimal: dict[str, Any]) -> None:  # noqa: N802
    before = render(minimal)
    after = render(_with_h100(minimal))

    assert set(worker_groups(after)) - set(worker_groups(before)) == {"h100"}
    group = worker_groups(after)["h100"]
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (0, 0, 3)
    assert group["rayStartParams"]["resources"] == '"{\\"pool-h100\\":8}"'
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == H100_POOL["tolerations"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    # ...and the Serve deployment that runs on it.
    assert set(serve_deployments(after)) - set(serve_deployments(before)) == {"DiffusionModel-sdxl"}
    sdxl = serve_deployments(after)["DiffusionModel-sdxl"]
    assert sdxl["ray_actor_options"] == {"num_cpus": 4, "num_gpus": 1, "resources": {"pool-h100": 1}}
    assert sdxl["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 24, "target_ongoing_requests": 1}
    # The existing pool and model are untouched.
    assert worker_groups(after)["l4"] == worker_groups(before)["l4"]
    assert serve_deployments(after)["DiffusionModel-sd15"] == serve_deployments(before)["DiffusionModel-sd15"]


def test_pins_each_models_replicas_to_its_pool_with_the_pools_custom_resource(ci_values: dict[str, Any]) -> None:
    release = render(ci_values)
    groups = worker_groups(release)

    for model in ci_values.get("models", []):
        options = serve_deployments(release)[f"DiffusionModel-{model['name']}"]["ray_actor_options"]
        assert options["resources"] == {f"pool-{model['pool']}": 1}
        offered = json.loads(json.loads(groups[model["pool"]]["rayStartParams"]["resources"]))
        assert set(offered) == {f"pool-{model['pool']}"}


def test_a_worker_offers_one_unit_of_its_pool_resource_per_replica_it_can_hold(minimal: dict[str, Any]) -> None:
    pool = {**minimal["gpuPools"][0], "gpusPerWorker": 4, "gpusPerReplica": 0.5}
    values = {**minimal, "gpuPools": [pool]}

    group = worker_groups(render(values))["l4"]

    assert json.loads(json.loads(group["rayStartParams"]["resources"])) == {"pool-l4": 8}
    assert group["rayStartParams"]["num-gpus"] == "4"
    assert serve_deployments(render(values))["DiffusionModel-sd15"]["ray_actor_options"]["num_gpus"] == 0.5


def test_a_model_without_autoscaling_runs_a_fixed_number_of_replicas(minimal: dict[str, Any]) -> None:
    model = {**minimal["models"][0], "autoscaling": {"enabled": False}, "numReplicas": 3}

    deployment = serve_deployments(render({**minimal, "models": [model]}))["DiffusionModel-sd15"]

    assert deployment["num_replicas"] == 3
    assert "autoscaling_config" not in deployment


def test_an_autoscaled_model_lets_serve_choose_its_replicas(minimal: dict[str, Any]) -> None:
    deployment = serve_deployments(render(minimal))["DiffusionModel-sd15"]

    assert deployment["num_replicas"] == "auto"
    assert deployment["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 10,
        "downscale_delay_s": 300,
    }
    assert deployment["max_ongoing_requests"] == 2


def test_sizes_the_gateway_deployment(minimal: dict[str, Any]) -> None:
    values = merged(minimal, {"ray": {"serve": {"gatewayReplicas": 3}}})

    assert serve_deployments(render(values))["Gateway"] == {"name": "Gateway", "num_replicas": 3}


def test_lets_ray_autoscale_each_pool_within_its_workers(minimal: dict[str, Any]) -> None:
    cluster = render(minimal).one("RayService")["spec"]["rayClusterConfig"]
    group = worker_groups(render(minimal))["l4"]

    assert cluster["enableInTreeAutoscaling"] is True
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 2)
    assert cluster["autoscalerOptions"]["securityContext"]["readOnlyRootFilesystem"] is True


def test_keeps_model_replicas_off_the_head(minimal: dict[str, Any]) -> None:
    head = render(minimal).one("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]

    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "resources" not in head["rayStartParams"]


def test_ray_pod_labels_leave_out_the_chart_version_so_chart_upgrades_keep_the_cluster(
    minimal: dict[str, Any],
) -> None:
    # Any change to rayClusterConfig makes KubeRay roll out a whole new cluster.
    spec = render(minimal).one("RayService")["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        labels = group["template"]["metadata"]["labels"]
        assert "helm.sh/chart" not in labels
        assert "app.kubernetes.io/version" not in labels


def test_mounts_the_model_volume_read_only_on_workers_only(minimal: dict[str, Any]) -> None:
    values = merged(minimal, {"ray": {"modelVolume": {"existingClaim": "models"}}})
    spec = render(values).one("RayService")["spec"]["rayClusterConfig"]

    worker = spec["workerGroupSpecs"][0]["template"]["spec"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in worker["containers"][0]["volumeMounts"]
    head = spec["headGroupSpec"]["template"]["spec"]
    assert "models" not in {v["name"] for v in head["volumes"]}


def test_rejects_a_model_on_a_pool_that_does_not_exist(minimal: dict[str, Any]) -> None:
    model = {**minimal["models"][0], "pool": "a100"}

    with pytest.raises(HelmRenderError, match=r'models\[sd15\].pool: "a100" is not a gpuPools\[\].name; valid: l4'):
        render({**minimal, "models": [model]})


def test_every_ray_pod_starts_with_serves_request_path_settings(minimal: dict[str, Any]) -> None:
    values = merged(minimal, {"ray": {"serve": {"maxMessageBytes": 8 * 1024 * 1024}}})
    spec = render(values).one("RayService")["spec"]["rayClusterConfig"]
    expected = serve_environment(max_message_bytes=8 * 1024 * 1024)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        assert {name: env.get(name) for name in expected} == expected
        assert env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == str(8 * 1024 * 1024)


def test_gpu_workers_request_node_disk_for_their_scratch_volumes(minimal: dict[str, Any]) -> None:
    pool = {**minimal["gpuPools"][0], "ephemeralStorage": "100Gi", "scratch": {"tmpSizeLimit": "30Gi"}}

    pod = worker_groups(render({**minimal, "gpuPools": [pool]}))["l4"]["template"]["spec"]

    assert pod["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "100Gi"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "30Gi"}
    assert volumes["state"]["emptyDir"] == {"sizeLimit": "40Gi"}


def test_the_chart_defaults_with_an_s3_blob_store_render_a_rayservice_both_kuberay_versions_accept() -> None:
    values = {
        "database": {"url": "postgresql://atelier@postgres:5432/atelier"},
        "masterKey": {"value": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="},
        "controlPlane": {"blobs": {"s3": {"bucket": "atelier-blobs"}}},
        "jobs": {"trainingExport": {"s3": {"bucket": "atelier-training"}}},
    }

    ray_service = render(values).one("RayService")

    for crd in CRD_FILES[("ray.io/v1", "RayService")]:
        validate_against_crd(ray_service, crd)


def test_a_pool_sets_its_runtime_and_priority_classes_labels_env_and_volumes(minimal: dict[str, Any]) -> None:
    shared_memory = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}
    pool = {
        **minimal["gpuPools"][0],
        "runtimeClassName": "nvidia",
        "priorityClassName": "gpu-serving",
        "labels": {"team": "imaging"},
        "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
        "volumes": [shared_memory],
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }

    template = worker_groups(render({**minimal, "gpuPools": [pool]}))["l4"]["template"]

    spec, container = template["spec"], template["spec"]["containers"][0]
    assert (spec["runtimeClassName"], spec["priorityClassName"]) == ("nvidia", "gpu-serving")
    assert template["metadata"]["labels"]["team"] == "imaging"
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in container["env"]
    assert shared_memory in spec["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_a_pool_spreads_its_workers_over_zones_when_asked(minimal: dict[str, Any]) -> None:
    assert "topologySpreadConstraints" not in worker_groups(render(minimal))["l4"]["template"]["spec"]
    pool = {**minimal["gpuPools"][0], "zoneSpread": {"enabled": True, "whenUnsatisfiable": "DoNotSchedule"}}

    (constraint,) = worker_groups(render({**minimal, "gpuPools": [pool]}))["l4"]["template"]["spec"][
        "topologySpreadConstraints"
    ]

    assert constraint["topologyKey"] == "topology.kubernetes.io/zone"
    assert (constraint["maxSkew"], constraint["whenUnsatisfiable"]) == (1, "DoNotSchedule")
    assert constraint["labelSelector"]["matchLabels"]["atelier.io/pool"] == "l4"
    # Only the pods of one RayCluster count: the second cluster of a blue/green upgrade spreads on its own.
    assert constraint["matchLabelKeys"] == ["ray.io/cluster"]


class TestReadiness:
    """A GPU worker takes gRPC traffic once its Serve gRPC proxy answers the standard health service."""

    def test_probes_each_workers_grpc_proxy(self, minimal: dict[str, Any]) -> None:
        cluster = render(minimal).one("RayService")["spec"]["rayClusterConfig"]

        probe = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["readinessProbe"]
        assert probe["grpc"] == {"port": 9000}
        # The head keeps KubeRay's probe: failing it would cut the workers off the head Service.
        assert "readinessProbe" not in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]

    def test_checks_only_that_the_port_accepts_connections_with_tls(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"tls": {"enabled": True, "secretName": "atelier-tls"}})

        probe = worker_groups(render(values))["l4"]["template"]["spec"]["containers"][0]["readinessProbe"]

        assert probe["tcpSocket"] == {"port": "serve-grpc"}

    def test_leaves_workers_without_a_proxy_to_kuberay(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"ray": {"serve": {"proxyLocation": "HeadOnly"}}})

        assert "readinessProbe" not in worker_groups(render(values))["l4"]["template"]["spec"]["containers"][0]


class TestKubeRayOptions:
    """GCS fault tolerance, authentication and the old cluster's deletion delay, each off by default."""

    def test_declares_the_oldest_kuberay_it_is_validated_against(self) -> None:
        chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())

        assert chart["annotations"]["atelier.io/kuberay-min-version"] == KUBERAY_VERSIONS[0]

    def test_keeps_the_gcs_state_in_redis_when_fault_tolerance_is_on(self, minimal: dict[str, Any]) -> None:
        redis = {"enabled": True, "redisAddress": "redis.ray:6379", "redisPasswordSecret": {"name": "ray-redis"}}

        ray_service = render(merged(minimal, {"ray": {"gcsFaultTolerance": redis}})).one("RayService")

        assert ray_service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"] == {
            "redisAddress": "redis.ray:6379",
            "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "ray-redis", "key": "password"}}},
        }
        for crd in CRD_FILES[("ray.io/v1", "RayService")]:
            validate_against_crd(ray_service, crd)

    def test_refuses_fault_tolerance_without_a_redis(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"ray": {"gcsFaultTolerance": {"enabled": True}}})

        with pytest.raises(HelmRenderError, match=r"ray\.gcsFaultTolerance\.redisAddress is required"):
            render(values)

    def test_renders_auth_options_and_the_deletion_delay_only_when_set(self, minimal: dict[str, Any]) -> None:
        spec = render(minimal).one("RayService")["spec"]
        assert "rayClusterDeletionDelaySeconds" not in spec and "authOptions" not in spec["rayClusterConfig"]
        values = merged(minimal, {"ray": {"authOptions": {"mode": "token"}, "rayClusterDeletionDelaySeconds": 300}})

        ray_service = render(values).one("RayService")

        assert ray_service["spec"]["rayClusterDeletionDelaySeconds"] == 300
        assert ray_service["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
        validate_against_crd(ray_service, "rayservice-v1.7.0.yaml")
        # KubeRay 1.3.0's API server would drop both fields: the README says they need a newer operator.
        with pytest.raises(jsonschema.ValidationError):
            validate_against_crd(ray_service, "rayservice-v1.3.0.yaml")
