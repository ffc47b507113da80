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


class TestDcgmExporter:
    """monitoring.dcgmExporter: the GPU panels' data, NVIDIA's dcgm-exporter, scraped on request."""

    def test_is_off_by_default_so_only_the_control_plane_is_scraped(self, minimal: dict[str, Any]) -> None:
        monitors = render(minimal).of_kind("ServiceMonitor")

        assert [m["metadata"]["name"] for m in monitors] == ["demo-atelier-control-plane"]

    def test_scrapes_the_exporter_keeping_the_pod_each_gpu_is_given_to(self, minimal: dict[str, Any]) -> None:
        values = merged(
            minimal,
            {"monitoring": {"dcgmExporter": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}},
        )

        (monitor,) = [
            m for m in render(values).of_kind("ServiceMonitor") if m["metadata"]["name"].endswith("dcgm-exporter")
        ]
        assert monitor["metadata"]["namespace"] == "atelier"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["selector"] == {"matchLabels": {"app": "nvidia-dcgm-exporter"}}
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["gpu-operator"]}
        # honorLabels: the dashboards join DCGM's pod/namespace labels to the Ray worker pods.
        assert monitor["spec"]["endpoints"] == [
            {"port": "gpu-metrics", "path": "/metrics", "interval": "30s", "honorLabels": True}
        ]

    def test_follows_an_exporter_installed_elsewhere(self, minimal: dict[str, Any]) -> None:
        # Helm merges maps: a values file drops the default selector label by setting it to null.
        exporter = {
            "enabled": True,
            "namespace": "monitoring",
            "selector": {"app": None, "app.kubernetes.io/name": "dcgm"},
            "port": "metrics",
        }
        values = merged(minimal, {"monitoring": {"dcgmExporter": exporter}})

        (monitor,) = [
            m for m in render(values).of_kind("ServiceMonitor") if m["metadata"]["name"].endswith("dcgm-exporter")
        ]
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["monitoring"]}
        assert monitor["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "dcgm"}}
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
