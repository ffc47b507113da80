"""templates/secret.yaml: the database URL and the master key, or the operator's own Secrets."""

from __future__ import annotations

from typing import Any

from ._chart import FULLNAME, load_values, merged, render


def test_the_pods_database_secret_is_a_release_resource(minimal: dict[str, Any]) -> None:
    secret = render(minimal).one("Secret", f"{FULLNAME}-database")

    assert "helm.sh/hook" not in secret["metadata"].get("annotations", {})
    assert secret["stringData"] == {"database-url": minimal["database"]["url"]}


def test_the_migration_hook_reads_its_own_copy_created_before_it(minimal: dict[str, Any]) -> None:
    release = render(minimal)
    copy = release.one("Secret", f"{FULLNAME}-database-migrate")
    job = release.one("Job")

    annotations = copy["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(annotations["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    assert copy["stringData"] == {"database-url": minimal["database"]["url"]}


def test_no_hook_copy_without_migrations(minimal: dict[str, Any]) -> None:
    names = {
        s["metadata"]["name"] for s in render(merged(minimal, {"migrations": {"enabled": False}})).of_kind("Secret")
    }

    assert names == {f"{FULLNAME}-database", f"{FULLNAME}-master-key"}


def test_master_key_secret_survives_uninstall(minimal: dict[str, Any]) -> None:
    secret = render(minimal).one("Secret", f"{FULLNAME}-master-key")

    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert secret["stringData"] == {"master-key": minimal["masterKey"]["value"]}


def test_existing_secrets_replace_the_charts_own() -> None:
    release = render(load_values("external-database"))

    assert release.of_kind("Secret") == []
    env = {e["name"]: e for e in release.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ATELIER_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "atelier-postgres", "key": "url"}
    volumes = {v["name"]: v for v in release.one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["master-key"]["secret"]["secretName"] == "atelier-kms-master-key"
    assert volumes["master-key"]["secret"]["items"] == [{"key": "key", "path": "master.key"}]
    job_env = {e["name"]: e for e in release.one("Job")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert job_env["ATELIER_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "atelier-postgres", "key": "url"}
