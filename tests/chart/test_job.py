"""templates/job.yaml: migrations run as a pre-install/pre-upgrade hook."""

from __future__ import annotations

from typing import Any

from ._chart import FULLNAME, merged, render


def test_applies_migrations_before_install_and_upgrade(minimal: dict[str, Any]) -> None:
    job = render(minimal).one("Job")
    container = job["spec"]["template"]["spec"]["containers"][0]

    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "hook-succeeded" in job["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    assert container["command"] == ["python", "-m", "control_plane", "migrate"]
    env = {e["name"]: e for e in container["env"]}
    assert env["ATELIER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == f"{FULLNAME}-database-migrate"


def test_needs_nothing_the_release_creates_after_the_hook(minimal: dict[str, Any]) -> None:
    # A pre-install hook runs before the release's ServiceAccount, ConfigMaps and master key exist.
    pod = render(minimal).one("Job")["spec"]["template"]["spec"]

    assert "serviceAccountName" not in pod
    assert [v for v in pod["volumes"] if "emptyDir" not in v] == []
    assert pod["restartPolicy"] == "Never"


def test_is_left_out_when_migrations_are_disabled(minimal: dict[str, Any]) -> None:
    assert render(merged(minimal, {"migrations": {"enabled": False}})).of_kind("Job") == []
