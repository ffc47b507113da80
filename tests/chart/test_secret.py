"""templates/secret.yaml: the database URL and the master key, or the operator's own Secrets."""

from __future__ import annotations

from typing import Any

from ._chart import FULLNAME, load_values, render


def test_database_secret_is_a_hook_created_before_the_migration_job(minimal: dict[str, Any]) -> None:
    release = render(minimal)
    secret = release.one("Secret", f"{FULLNAME}-database")
    job = release.one("Job")

    annotations = secret["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(annotations["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert secret["stringData"] == {"database-url": minimal["database"]["url"]}


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
