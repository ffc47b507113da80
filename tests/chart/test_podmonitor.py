"""templates/podmonitor.yaml: Prometheus scrapes every Ray pod's metrics export (inference and Serve)."""

from __future__ import annotations

from typing import Any

from ._chart import load_values, render, worker_groups


def test_scrapes_the_metrics_port_of_the_head_and_every_worker(minimal: dict[str, Any]) -> None:
    release = render(minimal)
    monitor = release.one("PodMonitor")["spec"]
    head = release.one("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]

    for labels in [head, *(g["template"]["metadata"]["labels"] for g in worker_groups(release).values())]:
        assert monitor["selector"]["matchLabels"].items() <= labels.items()
        assert labels["app.kubernetes.io/component"] in monitor["selector"]["matchExpressions"][0]["values"]
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


def test_labels_every_series_with_the_gpu_pool_of_its_pod(minimal: dict[str, Any]) -> None:
    (endpoint,) = render(minimal).one("PodMonitor")["spec"]["podMetricsEndpoints"]

    assert {"sourceLabels": ["__meta_kubernetes_pod_label_atelier_io_pool"], "targetLabel": "pool"} in (
        endpoint["relabelings"]
    )


def test_is_left_out_when_monitoring_is_off() -> None:
    assert render(load_values("monitoring-off")).of_kind("PodMonitor") == []
