"""templates/serviceaccount.yaml: the control plane's and the jobs' identity, with no API token."""

from __future__ import annotations

from typing import Any

from ._chart import FULLNAME, merged, render


def test_creates_a_service_account_without_an_api_token(minimal: dict[str, Any]) -> None:
    account = render(minimal).one("ServiceAccount")

    assert account["metadata"]["name"] == FULLNAME
    assert account["automountServiceAccountToken"] is False


def test_uses_an_existing_service_account_when_told_to(minimal: dict[str, Any]) -> None:
    values = merged(minimal, {"serviceAccount": {"create": False, "name": "atelier-irsa"}})
    release = render(values)

    assert release.of_kind("ServiceAccount") == []
    assert release.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "atelier-irsa"
