"""The metric names atelier exposes (issue 7), and the names a PromQL expression reads."""

from __future__ import annotations

import re

HISTOGRAMS = {
    "ray_atelier_inference_request_duration_seconds",
    "ray_atelier_inference_batch_size",
    "ray_atelier_inference_denoise_step_seconds",
    "atelier_control_plane_rpc_duration_seconds",
    # Ray Serve's own (its controller, once per replica start).
    "ray_serve_replica_startup_latency_ms",
}
OTHER_METRICS = {
    # Inference (Ray metrics of the Serve deployments, scraped from every Ray pod).
    "ray_atelier_inference_requests_total",
    "ray_atelier_inference_images_generated_total",
    "ray_atelier_inference_requests_in_flight",
    "ray_atelier_inference_credits_total",
    "ray_atelier_inference_moderation_blocks_total",
    "ray_atelier_inference_refusals_total",
    "ray_atelier_inference_replica_busy_seconds_total",
    "ray_atelier_inference_replica_queued_requests",
    # Ray Serve's own.
    "ray_serve_deployment_replica_healthy",
    "ray_serve_deployment_queued_queries",
    "ray_serve_autoscaling_target_replicas",
    "ray_serve_application_status",
    # Control plane (prometheus_client on its metrics port).
    "atelier_sweep_deleted_items_total",
    "atelier_sweep_lag_seconds",
    "atelier_export_rows_total",
    "atelier_dsr_open_requests",
    "atelier_dsr_overdue_requests",
    "atelier_credit_reservations_held",
    "atelier_credit_reservation_oldest_held_age_seconds",
    "atelier_database_reachable",
    "atelier_control_plane_refusals_total",
    # NVIDIA dcgm-exporter's (monitoring.dcgmExporter): GPU utilisation and frame-buffer memory in MiB.
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    # Prometheus's own, one per scrape target of the ServiceMonitor and PodMonitor.
    "up",
}
EXPOSED = OTHER_METRICS | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_MATCHERS = re.compile(r"\{[^}]*\}")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGES = re.compile(r"\[[^\]]*\]")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` reads (functions, keywords, labels, durations and variables left out)."""
    text = _VARIABLES.sub(" ", expr)
    text = _STRINGS.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}
