"""templates/cronjob.yaml: the retention sweeper and the training export, each toggleable."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import HelmRenderError

from ._chart import FULLNAME, merged, render


def _cron_jobs(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"].removeprefix(f"{FULLNAME}-"): c for c in render(values).of_kind("CronJob")}


def _container(cron_job: dict[str, Any]) -> dict[str, Any]:
    return cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def test_runs_the_sweeper_and_the_training_export_by_default(minimal: dict[str, Any]) -> None:
    jobs = _cron_jobs(minimal)

    assert _container(jobs["sweeper"])["command"] == ["atelier", "sweep", "--once"]
    assert _container(jobs["training-export"])["command"] == [
        "atelier",
        "export",
        "training",
        "-o",
        "s3://atelier-training/exports",
    ]
    assert jobs["sweeper"]["spec"]["schedule"] == "*/15 * * * *"


def test_never_runs_two_of_the_same_job_at_once(minimal: dict[str, Any]) -> None:
    for cron_job in _cron_jobs(minimal).values():
        assert cron_job["spec"]["concurrencyPolicy"] == "Forbid"


def test_each_job_can_be_turned_off(minimal: dict[str, Any]) -> None:
    without_sweeper = merged(minimal, {"jobs": {"sweeper": {"enabled": False}}})
    without_export = merged(minimal, {"jobs": {"trainingExport": {"enabled": False}}})

    assert set(_cron_jobs(without_sweeper)) == {"training-export"}
    assert set(_cron_jobs(without_export)) == {"sweeper"}


def test_jobs_share_the_control_planes_database_blobs_and_policy(minimal: dict[str, Any]) -> None:
    for cron_job in _cron_jobs(minimal).values():
        env = {e["name"]: e.get("value") for e in _container(cron_job)["env"]}
        mounts = {m["mountPath"] for m in _container(cron_job)["volumeMounts"]}
        assert {"ATELIER_DATABASE_URL", "ATELIER_POLICY_PROFILE", "ATELIER_MASTER_KEY_FILE"} <= set(env)
        assert env["ATELIER_BLOB_URL"] == "s3://atelier-blobs/prod"
        assert {"/etc/atelier/policy", "/etc/atelier/master-key"} <= mounts


def _export_pod(values: dict[str, Any]) -> dict[str, Any]:
    return _cron_jobs(values)["training-export"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


class TestTrainingExportDestination:
    """Where exports go: an S3 bucket, a claim, or (only when asked) an emptyDir."""

    def test_refuses_to_render_until_told_where_exports_go(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"jobs": {"trainingExport": {"s3": {"bucket": ""}}}})

        with pytest.raises(HelmRenderError) as error:
            render(values)

        for setting in (
            "jobs.trainingExport.s3.bucket",
            "jobs.trainingExport.existingClaim",
            "jobs.trainingExport.ephemeral",
        ):
            assert setting in str(error.value)

    def test_needs_no_destination_when_the_export_is_off(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"jobs": {"trainingExport": {"enabled": False, "s3": {"bucket": ""}}}})

        assert set(_cron_jobs(values)) == {"sweeper"}

    def test_writes_to_its_bucket_through_the_blob_stores_s3_connection(self, minimal: dict[str, Any]) -> None:
        pod = _export_pod(minimal)

        names = [e["name"] for e in pod["containers"][0]["env"]]
        assert names.count("AWS_ACCESS_KEY_ID") == 1
        assert "exports" not in {v["name"] for v in pod["volumes"]}

    def test_refuses_other_s3_credentials_than_the_blob_stores(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"jobs": {"trainingExport": {"s3": {"existingSecret": "other-keys"}}}})

        with pytest.raises(HelmRenderError, match=r"jobs\.trainingExport\.s3\.existingSecret differs"):
            render(values)

    def test_brings_its_own_s3_connection_when_blobs_are_on_a_claim(self, minimal: dict[str, Any]) -> None:
        values = merged(
            minimal,
            {
                "controlPlane": {"blobs": {"s3": {"bucket": ""}, "existingClaim": "atelier-blobs"}},
                "jobs": {"trainingExport": {"s3": {"endpoint": "http://minio:9000", "existingSecret": "export-keys"}}},
            },
        )

        env = {e["name"]: e for e in _export_pod(values)["containers"][0]["env"]}

        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "export-keys"
        assert "ATELIER_BLOB_URL" not in env

    def test_writes_to_its_claim(self, minimal: dict[str, Any]) -> None:
        values = merged(
            minimal, {"jobs": {"trainingExport": {"s3": {"bucket": ""}, "existingClaim": "training-exports"}}}
        )
        pod = _export_pod(values)

        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["exports"]["persistentVolumeClaim"] == {"claimName": "training-exports"}
        assert {"name": "exports", "mountPath": "/exports"} in pod["containers"][0]["volumeMounts"]
        assert pod["containers"][0]["command"][-2:] == ["-o", "/exports"]

    def test_writes_to_a_bounded_emptydir_only_when_told_exports_are_ephemeral(self, minimal: dict[str, Any]) -> None:
        values = merged(minimal, {"jobs": {"trainingExport": {"s3": {"bucket": ""}, "ephemeral": True}}})

        volumes = {v["name"]: v for v in _export_pod(values)["volumes"]}

        assert volumes["exports"]["emptyDir"] == {"sizeLimit": "10Gi"}
