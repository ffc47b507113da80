"""templates/models-build.yaml: `atelier models build` per GPU pool with a shared model cache claim, as a
pre-install/pre-upgrade hook after the migrations, on one GPU of the pool."""

from __future__ import annotations

import json
from typing import Any

from ._chart import FULLNAME, load_values, merged, render, worker_groups

CACHED_L4 = {"modelCache": {"existingClaim": "l4-cache"}}


def _with_pool(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`values` with its only pool changed by `overrides`."""
    (pool,) = values["gpuPools"]
    return merged(values, {"gpuPools": [merged(pool, overrides)]})


def _build_job(values: dict[str, Any], pool: str = "l4") -> dict[str, Any]:
    return render(values).one("Job", f"{FULLNAME}-models-build-{pool}")


def test_builds_after_the_migrations_and_before_the_release_starts_its_workers(minimal: dict[str, Any]) -> None:
    release = render(_with_pool(minimal, CACHED_L4))
    build = release.one("Job", f"{FULLNAME}-models-build-l4")
    migrate = release.one("Job", f"{FULLNAME}-migrate")
    config = release.one("ConfigMap", f"{FULLNAME}-models-build")

    for hook in (build, config):
        annotations = hook["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    weight = {m["metadata"]["name"]: int(m["metadata"]["annotations"]["helm.sh/hook-weight"]) for m in (build, migrate)}
    config_weight = int(config["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert weight[f"{FULLNAME}-migrate"] < config_weight < weight[f"{FULLNAME}-models-build-l4"]
    assert build["spec"]["backoffLimit"] == 1
    assert build["spec"]["activeDeadlineSeconds"] == 3600


def test_runs_the_build_command_with_the_pools_models_and_the_shared_cache(minimal: dict[str, Any]) -> None:
    release = render(_with_pool(minimal, CACHED_L4))
    pod = release.one("Job", f"{FULLNAME}-models-build-l4")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    assert container["command"] == ["atelier", "models", "build", "--json"]
    assert env["ATELIER_HOME"] == "/var/lib/atelier"
    assert mounts["model-cache"]["mountPath"] == "/var/lib/atelier/models"
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "l4-cache"}
    config_file = env["ATELIER_SERVE_CONFIG"].rsplit("/", 1)
    assert mounts["serve-config"]["mountPath"] == config_file[0]
    data = release.one("ConfigMap", f"{FULLNAME}-models-build")["data"]
    assert [m["name"] for m in json.loads(data[config_file[1]])["models"]] == ["sd15"]


def test_workers_mount_the_claim_where_the_build_wrote_it(minimal: dict[str, Any]) -> None:
    values = _with_pool(minimal, CACHED_L4)
    job_mounts = _build_job(values)["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    worker = worker_groups(render(values))["l4"]["template"]["spec"]
    worker_mounts = worker["containers"][0]["volumeMounts"]
    worker_env = {e["name"]: e.get("value") for e in worker["containers"][0]["env"]}
    job_env = {e["name"]: e["value"] for e in _build_job(values)["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert {"name": "model-cache", "mountPath": "/var/lib/atelier/models"} in worker_mounts
    assert [m for m in job_mounts if m["name"] == "model-cache"] == [
        m for m in worker_mounts if m["name"] == "model-cache"
    ]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "l4-cache"}} in worker["volumes"]
    assert worker_env["ATELIER_HOME"] == job_env["ATELIER_HOME"]


def test_runs_on_one_gpu_of_the_pools_own_nodes(minimal: dict[str, Any]) -> None:
    pod = _build_job(_with_pool(minimal, CACHED_L4))["spec"]["template"]["spec"]
    (pool,) = minimal["gpuPools"]

    assert pod["nodeSelector"] == pool["nodeSelector"]
    assert pod["tolerations"] == pool["tolerations"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_is_read_only_but_for_tmp_and_the_cache(minimal: dict[str, Any]) -> None:
    pod = _build_job(_with_pool(minimal, CACHED_L4))["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = sorted(m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly"))

    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert writable == ["/tmp", "/var/lib/atelier/models"]
    assert "emptyDir" in volumes["tmp"]


def test_one_job_per_pool_with_a_cache_claim_and_the_build_left_on() -> None:
    # three-pools: h100 builds, l4 shares a cache but turned the build off, a100 has no cache claim.
    release = render(load_values("three-pools"))
    jobs = {m["metadata"]["name"] for m in release.of_kind("Job")}
    h100 = release.one("Job", f"{FULLNAME}-models-build-h100")["spec"]
    data = release.one("ConfigMap", f"{FULLNAME}-models-build")["data"]

    assert {j for j in jobs if "models-build" in j} == {f"{FULLNAME}-models-build-h100"}
    assert set(data) == {"h100.json"}
    assert [m["name"] for m in json.loads(data["h100.json"])["models"]] == ["sdxl", "sdxl-turbo"]
    assert h100["activeDeadlineSeconds"] == 7200
    assert h100["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert h100["template"]["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "8", "memory": "64Gi"}


def test_is_left_out_without_a_cache_claim(minimal: dict[str, Any]) -> None:
    release = render(minimal)

    assert [m["metadata"]["name"] for m in release.of_kind("Job")] == [f"{FULLNAME}-migrate"]
    assert "model-cache" not in {v["name"] for v in worker_groups(release)["l4"]["template"]["spec"]["volumes"]}
