"""templates/deployment.yaml: the control plane (`python -m control_plane serve`)."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import HelmRenderError

from ._chart import FULLNAME, merged, render


def _container(values: dict[str, Any]) -> dict[str, Any]:
    return render(values).one("Deployment")["spec"]["template"]["spec"]["containers"][0]


def _env(values: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(values)["env"]}


def test_serves_grpc_and_metrics_on_the_configured_ports(minimal: dict[str, Any]) -> None:
    container = _container(minimal)
    env = _env(minimal)

    assert container["command"] == ["python", "-m", "control_plane", "serve"]
    assert env["ATELIER_CONTROL_PLANE_LISTEN"] == "0.0.0.0:50051"
    assert env["ATELIER_CONTROL_PLANE_METRICS_PORT"] == "9101"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": 50051, "metrics": 9101}


def test_reads_the_database_url_and_master_key_from_secrets(minimal: dict[str, Any]) -> None:
    env = _env(minimal)

    assert env["ATELIER_DATABASE_URL"] == {"secretKeyRef": {"name": f"{FULLNAME}-database", "key": "database-url"}}
    assert env["ATELIER_MASTER_KEY_FILE"] == "/etc/atelier/master-key/master.key"
    mounts = {m["name"]: m for m in _container(minimal)["volumeMounts"]}
    assert mounts["master-key"]["readOnly"] is True


def test_reads_the_policy_profile_and_applies_its_visibility_and_minimum_age(minimal: dict[str, Any]) -> None:
    env = _env(merged(minimal, {"policyProfile": {"defaultVisibility": "public", "minimumAge": 16}}))

    assert env["ATELIER_POLICY_PROFILE"] == "/etc/atelier/policy/profile.json"
    assert (env["ATELIER_DEFAULT_VISIBILITY"], env["ATELIER_MINIMUM_AGE"]) == ("public", "16")


def test_probes_the_standard_grpc_health_service(minimal: dict[str, Any]) -> None:
    container = _container(minimal)

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 50051}


def test_leaves_the_replica_count_to_the_autoscaler_when_it_is_on(minimal: dict[str, Any]) -> None:
    assert "replicas" not in render(minimal).one("Deployment")["spec"]
    values = merged(minimal, {"controlPlane": {"autoscaling": {"enabled": False}, "replicaCount": 3}})
    assert render(values).one("Deployment")["spec"]["replicas"] == 3


def test_rolls_out_without_losing_capacity_and_spreads_over_nodes(minimal: dict[str, Any]) -> None:
    spec = render(minimal).one("Deployment")["spec"]

    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == (
        "kubernetes.io/hostname"
    )


def test_restarts_when_the_policy_profile_changes(minimal: dict[str, Any]) -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = render(values).one("Deployment")["spec"]["template"]["metadata"]["annotations"]
        return annotations["checksum/policy-profile"]

    assert checksum(minimal) != checksum(merged(minimal, {"policyProfile": {"uploadRetentionHours": 12}}))


@pytest.mark.parametrize(
    ("change", "checksum"),
    [
        ({"database": {"url": "postgresql://atelier:rotated@postgres:5432/atelier"}}, "checksum/database-url"),
        ({"database": {"url": "", "existingSecret": "atelier-postgres"}}, "checksum/database-url"),
        ({"masterKey": {"value": "cm90YXRlZC1tYXN0ZXIta2V5LTMyLWJ5dGVzLWxvbmc="}}, "checksum/master-key"),
    ],
    ids=["rotated-database-url", "moved-to-an-existing-secret", "rotated-master-key"],
)
def test_restarts_when_the_database_url_or_master_key_changes(
    minimal: dict[str, Any], change: dict[str, Any], checksum: str
) -> None:
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        return render(values).one("Deployment")["spec"]["template"]["metadata"]["annotations"]

    before, after = annotations(minimal), annotations(merged(minimal, change))

    assert {key for key in before if before[key] != after[key]} == {checksum}


class TestBlobs:
    """Where images are kept: an S3 bucket, a shared claim, or (only when asked) an emptyDir."""

    def test_refuses_to_render_until_told_where_blobs_are_kept(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"controlPlane": {"blobs": {"s3": {"bucket": ""}}}})

        with pytest.raises(HelmRenderError) as error:
            render(values)

        message = str(error.value)
        for setting in (
            "controlPlane.blobs.s3.bucket",
            "controlPlane.blobs.existingClaim",
            "controlPlane.blobs.ephemeral",
        ):
            assert setting in message

    def test_refuses_two_places_at_once(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"controlPlane": {"blobs": {"existingClaim": "atelier-blobs"}}})

        with pytest.raises(HelmRenderError, match=r"controlPlane\.blobs: set only one of"):
            render(values)

    def test_keeps_blobs_in_the_s3_bucket_with_keys_from_the_secret(self, minimal: dict[str, Any]) -> None:
        env = _env(minimal)

        assert env["ATELIER_BLOB_URL"] == "s3://atelier-blobs/prod"
        assert env["AWS_REGION"] == "eu-west-1"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == {"secretKeyRef": {"name": "atelier-s3", "key": key}}
        assert "ATELIER_BLOB_DIR" not in env
        volumes = {v["name"] for v in render(minimal).one("Deployment")["spec"]["template"]["spec"]["volumes"]}
        assert "blobs" not in volumes

    def test_reaches_an_s3_compatible_store_at_its_endpoint(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"controlPlane": {"blobs": {"s3": {"endpoint": "http://minio.storage:9000"}}}})

        assert _env(values)["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"

    def test_uses_the_pods_own_identity_without_a_secret(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"controlPlane": {"blobs": {"s3": {"existingSecret": "", "prefix": ""}}}})

        env = _env(values)
        assert env["ATELIER_BLOB_URL"] == "s3://atelier-blobs"
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env

    def test_keeps_blobs_on_the_shared_claim_when_one_is_given(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"controlPlane": {"blobs": {"s3": {"bucket": ""}, "existingClaim": "atelier-blobs"}}})

        volumes = {v["name"]: v for v in render(values).one("Deployment")["spec"]["template"]["spec"]["volumes"]}

        assert volumes["blobs"] == {"name": "blobs", "persistentVolumeClaim": {"claimName": "atelier-blobs"}}
        assert _env(values)["ATELIER_BLOB_DIR"] == "/var/lib/atelier-blobs"
        assert "ATELIER_BLOB_URL" not in _env(values)

    def test_keeps_blobs_in_a_bounded_emptydir_only_when_told_they_are_ephemeral(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"controlPlane": {"blobs": {"s3": {"bucket": ""}, "ephemeral": True}}})

        volumes = {v["name"]: v for v in render(values).one("Deployment")["spec"]["template"]["spec"]["volumes"]}

        assert volumes["blobs"]["emptyDir"] == {"sizeLimit": "10Gi"}
        assert "WARNING: controlPlane.blobs.ephemeral is true" in render(values).notes


def test_passes_the_abuse_limits_to_the_control_plane(minimal: dict[str, Any]) -> None:
    env = _env(merged(minimal, {"controlPlane": {"limits": {"keyRatePerS": 7, "maxConcurrentGenerations": 0}}}))
    assert env["ATELIER_KEY_RATE_PER_S"] == "7"
    assert env["ATELIER_KEY_BURST"] == "200"
    assert env["ATELIER_ACCOUNT_RATE_PER_S"] == "10"
    assert env["ATELIER_MAX_CONCURRENT_GENERATIONS"] == "0"
