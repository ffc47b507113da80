"""values.schema.json: strict, and in step with the configuration the code reads."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from helm_python import HelmValuesError

from inference.config import ModelConfig

from ._chart import CHART_DIR, render

# ModelConfig fields the chart derives from a model's other keys and its pool.
DERIVED = {"name", "device", "num_gpus", "num_cpus", "num_replicas", "max_ongoing_requests"}


def _schema() -> dict[str, Any]:
    return json.loads((CHART_DIR / "values.schema.json").read_text())


def test_model_settings_accept_exactly_the_model_config_fields_the_chart_does_not_set() -> None:
    settings = _schema()["definitions"]["model"]["properties"]["settings"]

    assert settings["additionalProperties"] is False
    assert set(settings["properties"]) == {f.name for f in dataclasses.fields(ModelConfig)} - DERIVED


@pytest.mark.parametrize(
    "override",
    [
        {"unknown": 1},
        {"controlPlane": {"grpcPort": 0}},
        {"ray": {"serve": {"reservationTtlS": 30}}},
        {"gpuPools": [{"name": "Bad_Name", "maxWorkers": 1}]},
        {"models": [{"name": "sd15", "pool": "l4", "settings": {"num_gpus": 2}}]},
        {"models": [{"name": "sd15", "pool": "l4", "autoscaling": {"enabled": True}}]},
        {"policyProfile": {"trainingConsentMode": "always"}},
        {"monitoring": {"alerts": {"errorRatio": 2}}},
        {"monitoring": {"dcgmExporter": {"enabled": True, "namespace": "GPU_Operator"}}},
    ],
    ids=[
        "unknown-key",
        "port-zero",
        "reservation-ttl-below-60s",
        "pool-name-not-a-dns-label",
        "derived-model-setting",
        "autoscaling-without-bounds",
        "unknown-consent-mode",
        "ratio-above-one",
        "dcgm-exporter-namespace-not-a-dns-label",
    ],
)
def test_rejects_values_the_chart_cannot_run_with(minimal: dict[str, Any], override: dict[str, Any]) -> None:
    with pytest.raises(HelmValuesError):
        render({**minimal, **override})


def test_every_object_the_chart_owns_is_closed() -> None:
    def open_objects(node: Any, path: str) -> list[str]:
        found = []
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                found.append(path)
            for key, value in node.items():
                found += open_objects(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                found += open_objects(value, f"{path}/{index}")
        return found

    assert open_objects(_schema(), "") == []
