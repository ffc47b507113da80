"""templates/cronjob.yaml: the retention sweeper and the training export, each toggleable."""

from __future__ import annotations

from typing import Any

from ._chart import FULLNAME, merged, render


def _cron_jobs(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"].removeprefix(f"{FULLNAME}-"): c for c in render(values).of_kind("CronJob")}


def _container(cron_job: dict[str, Any]) -> dict[str, Any]:
    return cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def test_runs_the_sweeper_and_the_training_export_by_default(minimal: dict[str, Any]) -> None:
    jobs = _cron_jobs(minimal)

    assert _container(jobs["sweeper"])["command"] == ["atelier", "sweep", "--once"]
    assert _container(jobs["training-export"])["command"] == ["atelier", "export", "training", "-o", "/exports"]
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
        env = {e["name"] for e in _container(cron_job)["env"]}
        mounts = {m["mountPath"] for m in _container(cron_job)["volumeMounts"]}
        assert {"ATELIER_DATABASE_URL", "ATELIER_BLOB_DIR", "ATELIER_POLICY_PROFILE", "ATELIER_MASTER_KEY_FILE"} <= env
        assert {"/var/lib/atelier-blobs", "/etc/atelier/policy", "/etc/atelier/master-key"} <= mounts


def test_the_export_writes_to_its_claim(minimal: dict[str, Any]) -> None:
    values = merged(minimal, {"jobs": {"trainingExport": {"existingClaim": "training-exports"}}})
    pod = _cron_jobs(values)["training-export"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["exports"]["persistentVolumeClaim"] == {"claimName": "training-exports"}
    assert {"name": "exports", "mountPath": "/exports"} in pod["containers"][0]["volumeMounts"]
