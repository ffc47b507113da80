"""`c2pa.*`: the signing Secret mounted into the control plane and its jobs, named by the ATELIER_C2PA_*
variables the control plane reads (control_plane/config.py)."""

from __future__ import annotations

from typing import Any

from control_plane.config import ENV_VARS

from ._chart import merged, pod_specs, render

SIGNING = {"c2pa": {"existingSecret": "atelier-c2pa", "certificateKey": "tls.crt", "privateKeyKey": "tls.key"}}


def _control_plane_pods(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pods: dict[str, dict[str, Any]] = {}
    for manifest in render(values).manifests:
        if manifest["kind"] in ("Deployment", "CronJob", "Job"):
            for where, spec in pod_specs(manifest):
                pods[f"{manifest['kind']}/{manifest['metadata']['name']}/{where}"] = spec
    return pods


def _c2pa_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", []) if e["name"].startswith("ATELIER_C2PA_")}


def test_without_a_secret_nothing_is_mounted_and_the_notes_warn_of_development_certificates(
    minimal: dict[str, Any],
) -> None:
    release = render(minimal)
    deployment = release.one("Deployment")["spec"]["template"]["spec"]
    assert "c2pa-signing" not in {v["name"] for v in deployment["volumes"]}
    assert _c2pa_env(deployment["containers"][0]) == {}
    assert "development certificate" in release.notes


def test_the_control_plane_and_its_jobs_read_the_signing_secret_from_files(minimal: dict[str, Any]) -> None:
    pods = _control_plane_pods(merged(minimal, SIGNING))
    migrating = [where for where, pod in pods.items() if any(_c2pa_env(c) for c in pod["containers"])]
    assert any(where.startswith("Deployment/") for where in migrating)
    for where in migrating:
        pod = pods[where]
        volume = {v["name"]: v for v in pod["volumes"]}["c2pa-signing"]["secret"]
        assert volume["secretName"] == "atelier-c2pa", where
        assert {i["key"]: i["path"] for i in volume["items"]} == {"tls.crt": "chain.pem", "tls.key": "signer.key"}
        container = next(c for c in pod["containers"] if _c2pa_env(c))
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["c2pa-signing"]["mountPath"] == "/etc/atelier/c2pa" and mounts["c2pa-signing"]["readOnly"]
        assert _c2pa_env(container) == {
            ENV_VARS["c2pa_cert_file"]: "/etc/atelier/c2pa/chain.pem",
            ENV_VARS["c2pa_key_file"]: "/etc/atelier/c2pa/signer.key",
        }


def test_trust_anchors_are_mounted_only_when_named(minimal: dict[str, Any]) -> None:
    values = merged(minimal, {"c2pa": {**SIGNING["c2pa"], "trustAnchorsKey": "roots.pem"}})
    container = render(values).one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert _c2pa_env(container)[ENV_VARS["c2pa_trust_anchors_file"]] == "/etc/atelier/c2pa/trust-anchors.pem"
