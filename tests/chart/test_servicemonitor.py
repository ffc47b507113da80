"""templates/servicemonitor.yaml: Prometheus scrapes the control plane's /metrics."""

from __future__ import annotations

from typing import Any

from ._chart import load_values, merged, render


def test_scrapes_the_control_plane_metrics_port(minimal: dict[str, Any]) -> None:
    release = render(minimal)
    monitor = release.one("ServiceMonitor")["spec"]
    service = release.one("Service")

    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["namespaceSelector"] == {"matchNames": ["atelier"]}


def test_carries_the_labels_prometheus_selects_by(minimal: dict[str, Any]) -> None:
    values = merged(minimal, {"monitoring": {"serviceMonitor": {"labels": {"release": "kube-prometheus-stack"}}}})

    assert render(values).one("ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_is_left_out_when_monitoring_is_off() -> None:
    assert render(load_values("monitoring-off")).of_kind("ServiceMonitor") == []
