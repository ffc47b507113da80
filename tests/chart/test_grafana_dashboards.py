"""templates/grafana-dashboards.yaml: dashboards as ConfigMaps for the Grafana sidecar."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ._chart import load_values, render
from ._metrics import EXPOSED, metric_names


def _dashboards(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    boards = {}
    for config_map in render(values).of_kind("ConfigMap"):
        if config_map["metadata"]["labels"].get("grafana_dashboard") == "1":
            ((name, text),) = config_map["data"].items()
            boards[name] = json.loads(text)
    return boards


def _panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _recorded(values: dict[str, Any]) -> set[str]:
    groups = render(values).one("PrometheusRule")["spec"]["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def test_ships_the_inference_and_control_plane_dashboards_for_the_sidecar(minimal: dict[str, Any]) -> None:
    assert set(_dashboards(minimal)) == {"inference.json", "control-plane.json"}


def test_every_dashboard_has_a_unique_uid_title_and_panel_ids(minimal: dict[str, Any]) -> None:
    boards = list(_dashboards(minimal).values())

    assert len({b["uid"] for b in boards}) == len(boards)
    for board in boards:
        assert board["title"] and board["schemaVersion"] >= 36
        ids = [p["id"] for p in _panels(board)]
        assert len(ids) == len(set(ids))
        for panel in _panels(board):
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"])


def test_queries_go_through_the_datasource_variable(minimal: dict[str, Any]) -> None:
    for board in _dashboards(minimal).values():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in _panels(board):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_queries_read_only_the_metrics_atelier_exposes(minimal: dict[str, Any]) -> None:
    allowed = EXPOSED | _recorded(minimal)
    for name, board in _dashboards(minimal).items():
        queries = [t["expr"] for p in _panels(board) for t in p.get("targets", [])]
        queries += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
        for query in queries:
            unknown = metric_names(query.removeprefix("label_values(").removesuffix(", model)")) - allowed
            assert not unknown, (name, query, unknown)


def test_cover_every_view_sres_asked_for(minimal: dict[str, Any]) -> None:
    titles = {p["title"] for board in _dashboards(minimal).values() for p in _panels(board)}

    for wanted in (
        "p95 latency by stage",
        "p95 end-to-end latency by model",
        "Requests per second by model and code",
        "Queue depth by model deployment",
        "Healthy replicas per GPU pool",
        "Batch size (p50, p95)",
        "Credits per second by outcome",
        "Items swept per second by reason",
        "Sweep lag",
        "Overdue data-subject requests by kind",
        "Training export rows per second",
        # Issue 18: refusals, replicas, steps and GPUs.
        "Refusals per second by ErrorInfo reason",
        "Refusals per second by method and ErrorInfo reason",
        "Replica utilisation (pipeline busy time / wall time)",
        "Autoscaler target vs running replicas per pool",
        "Replica starts (restarts and scale-ups)",
        "Cold-start time (replica creation to ready)",
        "Time per denoising step by model",
        "GPU utilisation (DCGM)",
        "GPU memory used (DCGM)",
    ):
        assert wanted in titles


def test_are_left_out_when_monitoring_is_off() -> None:
    assert _dashboards(load_values("monitoring-off")) == {}


def test_gpu_panels_show_the_gpus_given_to_atelier_replica_pods_and_no_others(
    minimal: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    # No GPU here (the Prometheus e2e test leaves these panels out): promtool evaluates them on the series
    # dcgm-exporter (honorLabels) and a model replica's Ray worker pod export.
    board = _dashboards(minimal)["inference.json"]
    gpu = {
        p["title"]: p["targets"][0]["expr"]
        for p in _panels(board)
        if p["type"] != "row" and p["title"].endswith("(DCGM)")
    }
    ours = 'namespace="atelier",pod="demo-atelier-l4-worker-x"'
    theirs = 'namespace="other",pod="trainer-0"'
    series = [
        (f'DCGM_FI_DEV_GPU_UTIL{{gpu="0",{ours}}}', "87"),
        (f'DCGM_FI_DEV_FB_USED{{gpu="0",{ours}}}', "6144"),
        (f'DCGM_FI_DEV_FB_FREE{{gpu="0",{ours}}}', "18432"),
        (f'DCGM_FI_DEV_GPU_UTIL{{gpu="0",{theirs}}}', "100"),
        (f'DCGM_FI_DEV_FB_USED{{gpu="0",{theirs}}}', "20000"),
        (f'DCGM_FI_DEV_FB_FREE{{gpu="0",{theirs}}}', "4576"),
        (f'ray_atelier_inference_replica_queued_requests{{model="sd15",replica="r1",{ours}}}', "0"),
    ]
    expected = {
        "GPU utilisation (DCGM)": 87,
        "GPU memory used (DCGM)": 6144,
        "GPU memory used share (DCGM)": 0.25,
    }
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": name, "values": f"{value}x5"} for name, value in series],
                "promql_expr_test": [
                    {
                        "expr": gpu[title],
                        "eval_time": "2m",
                        "exp_samples": [{"labels": '{gpu="0",pod="demo-atelier-l4-worker-x"}', "value": value}],
                    }
                    for title, value in expected.items()
                ],
            }
        ],
    }
    (tmp_path / "gpu.test.yaml").write_text(yaml.safe_dump(test))

    assert set(gpu) == set(expected)
    result = subprocess.run(
        [promtool, "test", "rules", "gpu.test.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
