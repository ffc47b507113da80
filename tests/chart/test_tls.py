"""`tls.*`: the Secret's certificates mounted into the control plane, its jobs and every Ray pod, named
by the ATELIER_TLS_* variables the code reads, and probes that still work with TLS on."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import HelmRenderError, HelmValuesError

from inference.grpc_proxy import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE
from transport.tls import ENV_VARS

from ._chart import load_values, merged, pod_specs, render

TLS_ON = {"tls": {"enabled": True, "secretName": "atelier-tls"}}
SERVER_AND_CLIENT = {
    "ATELIER_TLS_CERT_FILE": "/etc/atelier/tls/tls.crt",
    "ATELIER_TLS_KEY_FILE": "/etc/atelier/tls/tls.key",
    "ATELIER_TLS_CA_FILE": "/etc/atelier/tls/ca.crt",
}
MUTUAL = {
    "ATELIER_TLS_CLIENT_CA_FILE": "/etc/atelier/tls/ca.crt",
    "ATELIER_TLS_CLIENT_CERT_FILE": "/etc/atelier/tls/tls.crt",
    "ATELIER_TLS_CLIENT_KEY_FILE": "/etc/atelier/tls/tls.key",
}


def _pods(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pod specs of the control plane, its CronJobs and the Ray groups, by where they sit."""
    pods: dict[str, dict[str, Any]] = {}
    for manifest in render(values).manifests:
        if manifest["kind"] in ("Deployment", "CronJob", "RayService"):
            for where, spec in pod_specs(manifest):
                pods[f"{manifest['kind']}/{manifest['metadata']['name']}/{where}"] = spec
    return pods


def _tls_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if e["name"].startswith("ATELIER_TLS_")}


def _control_plane(values: dict[str, Any]) -> dict[str, Any]:
    return render(values).one("Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_tls_is_off_by_default_and_mounts_nothing(minimal: dict[str, Any]) -> None:
    for where, pod in _pods(minimal).items():
        assert "tls" not in {v["name"] for v in pod.get("volumes", [])}, where
        for container in pod["containers"]:
            assert _tls_env(container) == {}, where
            assert PROXY_CALLBACK_VARIABLE not in {e["name"] for e in container.get("env", [])}, where


def test_every_grpc_pod_mounts_the_secret_read_only_and_names_its_files(minimal: dict[str, Any]) -> None:
    pods = _pods(merged(minimal, TLS_ON))
    assert any("headGroupSpec" in where for where in pods) and any("workerGroupSpecs" in where for where in pods)
    for where, pod in pods.items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "atelier-tls", where
        assert {item["path"] for item in volumes["tls"]["secret"]["items"]} == {"tls.crt", "tls.key", "ca.crt"}
        container = pod["containers"][0]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/atelier/tls", "readOnly": True}, where
        assert _tls_env(container) == SERVER_AND_CLIENT, where


def test_the_variables_are_the_ones_the_code_reads(minimal: dict[str, Any]) -> None:
    container = _control_plane(load_values("tls"))
    assert set(_tls_env(container)) <= set(ENV_VARS.values())
    assert set(_tls_env(container)) == set(SERVER_AND_CLIENT) | set(MUTUAL)


def test_mutual_tls_requires_and_presents_client_certificates(minimal: dict[str, Any]) -> None:
    values = merged(minimal, merged(TLS_ON, {"tls": {"mutual": True}}))
    for where, pod in _pods(values).items():
        assert _tls_env(pod["containers"][0]) == {**SERVER_AND_CLIENT, **MUTUAL}, where


def test_ray_pods_run_the_proxy_callback_that_binds_serves_grpc_port_with_tls(minimal: dict[str, Any]) -> None:
    ray_pods = {where: pod for where, pod in _pods(merged(minimal, TLS_ON)).items() if "RayService" in where}
    assert len(ray_pods) == 2
    for where, pod in ray_pods.items():
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env[PROXY_CALLBACK_VARIABLE] == PROXY_CALLBACK, where


def test_control_plane_probes_use_tcp_with_tls_since_kubernetes_grpc_probes_cannot_speak_it(
    minimal: dict[str, Any],
) -> None:
    container = _control_plane(merged(minimal, TLS_ON))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "grpc"}
        assert "grpc" not in container[probe]
    plain = _control_plane(minimal)
    assert plain["readinessProbe"]["grpc"] == {"port": 50051}


def test_enabling_tls_without_a_secret_fails_with_a_message(minimal: dict[str, Any]) -> None:
    with pytest.raises(HelmRenderError, match=r"tls\.secretName is required when tls\.enabled"):
        render(merged(minimal, {"tls": {"enabled": True}}))


@pytest.mark.parametrize("override", [{"tls": {"enabled": "yes"}}, {"tls": {"cert": "x"}}])
def test_the_schema_rejects_malformed_tls_values(minimal: dict[str, Any], override: dict[str, Any]) -> None:
    with pytest.raises(HelmValuesError):
        render(merged(minimal, override))
