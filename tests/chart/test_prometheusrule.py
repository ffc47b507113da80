"""templates/prometheusrule.yaml: alerts and recording rules, checked and unit-tested with promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ._chart import load_values, render
from ._metrics import EXPOSED, metric_names

RULE_TESTS = Path(__file__).parent / "rules"


def _groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    return render(values).one("PrometheusRule")["spec"]["groups"]


def _write_rules(values: dict[str, Any], directory: Path) -> Path:
    path = directory / "atelier-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": _groups(values)}, sort_keys=False))
    return path


def _run(*command: str, cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_promtool_check(ci_values: dict[str, Any], promtool: str, tmp_path: Path) -> None:
    if not ci_values.get("monitoring", {}).get("prometheusRule", {}).get("enabled", True):
        assert render(ci_values).of_kind("PrometheusRule") == []
        return
    rules = _write_rules(ci_values, tmp_path)

    # Duplicate rules (same name and labels) are an error, not a warning.
    _run(promtool, "check", "rules", "--lint=duplicate-rules", "--lint-fatal", rules.name, cwd=tmp_path)


def test_rules_pass_their_promtool_unit_tests(promtool: str, tmp_path: Path) -> None:
    # The unit tests are written against ci/minimal-values.yaml (model sd15 on pool l4).
    _write_rules(load_values("minimal"), tmp_path)
    for test in RULE_TESTS.glob("*.test.yaml"):
        shutil.copy(test, tmp_path / test.name)

        _run(promtool, "test", "rules", test.name, cwd=tmp_path)


def test_alerts_cover_latency_errors_saturation_sweeps_privacy_credits_database_replicas_and_scrapes(
    minimal: dict[str, Any],
) -> None:
    alerts = {rule["alert"] for group in _groups(minimal) for rule in group["rules"] if "alert" in rule}

    assert alerts == {
        "AtelierInferenceLatencySLOBurn",
        "AtelierInferenceErrorRatioHigh",
        "AtelierGPUPoolSaturated",
        "AtelierSweepLagging",
        "AtelierDataSubjectRequestsOverdue",
        "AtelierCreditReservationsStuck",
        "AtelierModelNoHealthyReplicas",
        "AtelierInferenceClientTimeoutsHigh",
        "AtelierDatabaseUnreachable",
        "AtelierDatabaseReachabilityAbsent",
        "AtelierScrapeTargetDown",
        "AtelierControlPlaneErrorRatioHigh",
        "AtelierControlPlaneLatencyHigh",
        "AtelierServeApplicationUnhealthy",
        "AtelierMetricsAbsent",
    }


def test_rules_read_only_the_metrics_atelier_exposes(ci_values: dict[str, Any]) -> None:
    if not render(ci_values).of_kind("PrometheusRule"):
        return
    groups = _groups(ci_values)
    recorded = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}

    for group in groups:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - EXPOSED - recorded
            assert not unknown, (rule.get("alert") or rule.get("record"), unknown)


def test_each_model_has_its_own_latency_objective_and_saturation_threshold() -> None:
    groups = _groups(load_values("three-pools"))
    rules = [rule for group in groups for rule in group["rules"] if "alert" in rule]

    latency = [r["expr"] for r in rules if r["alert"] == "AtelierInferenceLatencySLOBurn"]
    assert len(latency) == 4
    assert any('p95_5m{model="sdxl"} > 20' in expr for expr in latency)
    assert any('p95_5m{model="sd15"} > 10' in expr for expr in latency)
    saturation = {r["labels"]["model"]: r["expr"] for r in rules if r["alert"] == "AtelierGPUPoolSaturated"}
    # sd15: 12 replicas allowed, a100 holds 3 workers x 4 GPUs = 12; sdxl: min(16, 2 workers x 8 GPUs).
    assert saturation["sd15"].rstrip().endswith(">= 12")
    assert saturation["sdxl"].rstrip().endswith(">= 16")
    assert saturation["tiny-sd"].rstrip().endswith(">= 1")


def test_each_latency_alert_carries_its_model_so_models_on_one_pool_stay_apart() -> None:
    groups = _groups(load_values("three-pools"))
    latency = [r for g in groups for r in g["rules"] if r.get("alert") == "AtelierInferenceLatencySLOBurn"]

    # sdxl and sdxl-turbo share pool h100: without the model label the two rules would be duplicates.
    assert {(r["labels"]["model"], r["labels"]["pool"]) for r in latency} == {
        ("tiny-sd", "l4"),
        ("sd15", "a100"),
        ("sdxl", "h100"),
        ("sdxl-turbo", "h100"),
    }
