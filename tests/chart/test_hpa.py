"""templates/hpa.yaml: the control plane scales on CPU."""

from __future__ import annotations

from typing import Any

from ._chart import FULLNAME, merged, render


def test_scales_the_control_plane_deployment_on_cpu(minimal: dict[str, Any]) -> None:
    hpa = render(minimal).one("HorizontalPodAutoscaler")["spec"]

    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{FULLNAME}-control-plane"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_is_left_out_when_autoscaling_is_off(minimal: dict[str, Any]) -> None:
    values = merged(minimal, {"controlPlane": {"autoscaling": {"enabled": False}}})

    assert render(values).of_kind("HorizontalPodAutoscaler") == []
