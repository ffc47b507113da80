"""templates/grafana-dashboards.yaml: dashboards as ConfigMaps for the Grafana sidecar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

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
