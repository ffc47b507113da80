"""templates/service.yaml: the control plane's gRPC and metrics ports."""

from __future__ import annotations

from typing import Any

from ._chart import FULLNAME, render


def test_exposes_grpc_and_metrics_to_the_control_plane_pods(minimal: dict[str, Any]) -> None:
    release = render(minimal)
    service = release.one("Service", f"{FULLNAME}-control-plane")
    pod_labels = release.one("Deployment")["spec"]["template"]["metadata"]["labels"]

    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "grpc": (50051, "grpc"),
        "metrics": (9101, "metrics"),
    }
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "control-plane"
