"""templates/poddisruptionbudget.yaml: voluntary disruptions take one control plane pod at a time."""

from __future__ import annotations

from typing import Any

from ._chart import merged, render


def test_keeps_all_but_one_control_plane_pod_through_disruptions(minimal: dict[str, Any]) -> None:
    release = render(minimal)
    pdb = release.one("PodDisruptionBudget")["spec"]
    pod_labels = release.one("Deployment")["spec"]["template"]["metadata"]["labels"]

    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


def test_is_left_out_when_disabled(minimal: dict[str, Any]) -> None:
    values = merged(minimal, {"controlPlane": {"podDisruptionBudget": {"enabled": False}}})

    assert render(values).of_kind("PodDisruptionBudget") == []
