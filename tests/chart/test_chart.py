"""The chart as a whole: it lints, every manifest is valid Kubernetes, names and labels follow one rule,
and every container runs with the secure defaults."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_python import HelmRenderError

from ._chart import (
    CHART_DIR,
    CI_VALUES,
    CUSTOM_KINDS,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    lint,
    load_values,
    merged,
    pod_specs,
    render,
)
from ._crds import validate_builtin, validate_custom

WARNING = 2


def test_lints_cleanly_in_strict_mode(ci_values: dict[str, Any]) -> None:
    report = lint(ci_values)

    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.name)
def test_the_helm_binary_lints_it_and_renders_what_the_sdk_renders(helm: str, values_file: Path) -> None:
    def run(*args: str) -> str:
        result = subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    run("lint", "--strict", str(CHART_DIR), "-f", str(values_file))
    text = run("template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, "-f", str(values_file))

    rendered = {(m["kind"], m["metadata"]["name"]) for m in yaml.safe_load_all(text) if m}
    expected = render(load_values(values_file.name.removesuffix("-values.yaml"))).manifests
    assert rendered == {(m["kind"], m["metadata"]["name"]) for m in expected}


def test_every_builtin_manifest_is_valid_against_the_kubernetes_schemas(ci_values: dict[str, Any]) -> None:
    for manifest in render(ci_values).manifests:
        if manifest["kind"] not in CUSTOM_KINDS:
            validate_builtin(manifest)


def test_every_custom_resource_has_the_fields_its_operator_requires(ci_values: dict[str, Any]) -> None:
    custom = [m for m in render(ci_values).manifests if m["kind"] in CUSTOM_KINDS]

    assert custom
    for manifest in custom:
        validate_custom(manifest)


def test_refuses_to_render_without_a_database(minimal: dict[str, Any]) -> None:
    values = {**minimal, "database": {"url": ""}}

    with pytest.raises(HelmRenderError, match=r"database\.url or database\.existingSecret is required"):
        render(values)


def test_refuses_to_render_the_defaults_until_told_where_blobs_and_exports_are_kept() -> None:
    secrets = {"database": {"url": "postgresql://atelier@postgres/atelier"}, "masterKey": {"value": "a2V5"}}

    with pytest.raises(HelmRenderError, match=r"controlPlane\.blobs: choose where data is kept"):
        render(secrets)
    with pytest.raises(HelmRenderError, match=r"jobs\.trainingExport: choose where data is kept"):
        render({**secrets, "controlPlane": {"blobs": {"s3": {"bucket": "atelier"}}}})
    render({**secrets, "controlPlane": {"blobs": {"ephemeral": True}}, "jobs": {"trainingExport": {"enabled": False}}})


def test_refuses_to_render_without_a_master_key(minimal: dict[str, Any]) -> None:
    values = {**minimal, "masterKey": {"value": ""}}

    with pytest.raises(HelmRenderError, match=r"masterKey\.value or masterKey\.existingSecret is required"):
        render(values)


def test_every_resource_is_named_after_the_release_and_labelled_as_part_of_it(ci_values: dict[str, Any]) -> None:
    for manifest in render(ci_values).manifests:
        metadata = manifest["metadata"]
        labels = metadata["labels"]
        if manifest["kind"] == "Secret" and not metadata["name"].startswith(FULLNAME):
            continue
        assert metadata["name"].startswith(FULLNAME), metadata["name"]
        assert labels["app.kubernetes.io/name"] == "atelier"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"].startswith("atelier-")


def test_every_container_runs_non_root_read_only_without_privileges(ci_values: dict[str, Any]) -> None:
    checked = 0
    for manifest in render(ci_values).manifests:
        for where, pod in pod_specs(manifest):
            pod_context = pod["securityContext"]
            assert pod_context["runAsNonRoot"] is True, where
            assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context["runAsNonRoot"] is True, where
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["capabilities"] == {"drop": ["ALL"]}, where
                assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
                checked += 1
    assert checked >= 4


def test_every_container_has_a_writable_tmp(ci_values: dict[str, Any]) -> None:
    for manifest in render(ci_values).manifests:
        for where, pod in pod_specs(manifest):
            empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
            for container in pod["containers"]:
                tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert len(tmp) == 1 and tmp[0]["name"] in empty_dirs, where


def test_every_emptydir_has_a_size_limit(ci_values: dict[str, Any]) -> None:
    for manifest in render(ci_values).manifests:
        for where, pod in pod_specs(manifest):
            for volume in pod.get("volumes", []):
                if "emptyDir" in volume:
                    assert volume["emptyDir"].get("sizeLimit"), (where, volume["name"])


def test_every_container_sets_its_resources(ci_values: dict[str, Any]) -> None:
    for manifest in render(ci_values).manifests:
        for where, pod in pod_specs(manifest):
            for container in pod["containers"]:
                assert container["resources"].get("requests"), where
                assert container["resources"]["limits"].get("memory"), where


def test_notes_tell_where_the_grpc_api_answers(minimal: dict[str, Any]) -> None:
    notes = render(minimal).notes

    assert f"{FULLNAME}-serve-svc.atelier.svc:9000" in notes
    assert "sd15 -> DiffusionModel-sd15 on pool l4 (1..4 replicas)" in notes


def test_every_container_runs_the_image_by_digest_when_one_is_given(minimal: dict[str, Any]) -> None:
    digest = "sha256:" + "ab" * 32
    values = merged(minimal, {"image": {"repository": "registry.example/atelier", "tag": "1.2.3", "digest": digest}})

    images = {c["image"] for m in render(values).manifests for _, pod in pod_specs(m) for c in pod["containers"]}

    assert images == {f"registry.example/atelier@{digest}"}


def test_every_container_runs_the_tagged_image_without_a_digest(minimal: dict[str, Any]) -> None:
    values = merged(minimal, {"image": {"repository": "registry.example/atelier", "tag": "1.2.3"}})

    images = {c["image"] for m in render(values).manifests for _, pod in pod_specs(m) for c in pod["containers"]}

    assert images == {"registry.example/atelier:1.2.3"}


def test_every_pod_pulls_with_the_secrets_given_by_name_or_as_objects(minimal: dict[str, Any]) -> None:
    values = {**minimal, "imagePullSecrets": ["registry-a", {"name": "registry-b"}]}

    for manifest in render(values).manifests:
        for where, pod in pod_specs(manifest):
            assert pod["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}], where


def test_the_control_plane_and_its_jobs_can_run_the_slim_image_while_ray_runs_the_gpu_one(
    minimal: dict[str, Any],
) -> None:
    gpu, cpu = "sha256:" + "a" * 64, "sha256:" + "c" * 64
    values = merged(
        minimal,
        {
            "image": {"repository": "registry.example/atelier", "digest": gpu},
            "controlPlane": {"image": {"repository": "registry.example/atelier-cpu", "digest": cpu}},
        },
    )

    images = {
        m["kind"]: {c["image"] for _, pod in pod_specs(m) for c in pod["containers"]} for m in render(values).manifests
    }

    assert images["RayService"] == {f"registry.example/atelier@{gpu}"}
    for kind in ("Deployment", "Job", "CronJob"):
        assert images[kind] == {f"registry.example/atelier-cpu@{cpu}"}, kind


def test_a_control_plane_tag_replaces_the_inherited_digest(minimal: dict[str, Any]) -> None:
    values = merged(
        minimal, {"image": {"digest": "sha256:" + "a" * 64}, "controlPlane": {"image": {"tag": "0.1.0-cpu"}}}
    )

    assert render(values).one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "ghcr.io/atelier-ai/atelier:0.1.0-cpu"
    )
