"""Every process exposes /metrics, and the documented families are there and move with traffic."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protos.atelier.v1 import inference_pb2

INFERENCE_FAMILIES = {
    "ray_atelier_inference_request_duration_seconds",
    "ray_atelier_inference_requests",
    "ray_atelier_inference_images_generated",
    "ray_atelier_inference_batch_size",
    "ray_atelier_inference_requests_in_flight",
    "ray_atelier_inference_credits",
    "ray_atelier_inference_moderation_blocks",
    "ray_atelier_inference_refusals",
    "ray_atelier_inference_replica_busy_seconds",
    "ray_atelier_inference_denoise_step_seconds",
    "ray_atelier_inference_replica_queued_requests",
    "ray_serve_deployment_replica_healthy",
}
CONTROL_PLANE_FAMILIES = {
    "atelier_control_plane_rpc_duration_seconds",
    "atelier_credit_reservations_held",
    "atelier_credit_reservation_oldest_held_age_seconds",
    "atelier_dsr_open_requests",
    "atelier_dsr_overdue_requests",
    "atelier_sweep_lag_seconds",
    "atelier_sweep_deleted_items",
    "atelier_export_rows",
    "atelier_database_reachable",
    "atelier_control_plane_refusals",
}


def _scrape(url: str) -> dict[str, float]:
    """Sum of every sample per family name (counters' `_total`, histograms' `_count`)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        samples = [s for s in family.samples if s.name.endswith(("_total", "_count")) or family.type == "gauge"]
        totals[family.name] = sum(s.value for s in samples)
    return totals


def _wait_for(url: str, families: set[str], timeout_s: float = 90) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        totals = _scrape(url)
        if families <= set(totals) or time.monotonic() > deadline:
            return totals
        time.sleep(1)


def test_inference_and_control_plane_metrics_are_exported_and_move(
    cluster, inference, operator_metadata, make_account
) -> None:
    account_id = make_account(10)
    request = inference_pb2.GenerateRequest(account_id=account_id, prompt="a heron", steps=2, seed=1)
    inference.Generate(request, metadata=operator_metadata, timeout=120)
    blocked = inference_pb2.GenerateRequest(account_id=account_id, prompt="a gore scene, beheading", steps=2)
    with pytest.raises(grpc.RpcError):
        inference.Generate(blocked, metadata=operator_metadata, timeout=120)
    before = _wait_for(cluster.ray_metrics_url, INFERENCE_FAMILIES)
    assert set(before) >= INFERENCE_FAMILIES, sorted(INFERENCE_FAMILIES - set(before))
    control_before = _scrape(cluster.control_plane_metrics_url)
    assert set(control_before) >= CONTROL_PLANE_FAMILIES

    inference.Generate(request, metadata=operator_metadata, timeout=120)
    deadline = time.monotonic() + 90
    while True:
        after = _scrape(cluster.ray_metrics_url)
        if after["ray_atelier_inference_images_generated"] > before["ray_atelier_inference_images_generated"]:
            break
        assert time.monotonic() < deadline, "images_generated did not move after a generation"
        time.sleep(1)
    assert (
        after["ray_atelier_inference_request_duration_seconds"]
        > before["ray_atelier_inference_request_duration_seconds"]
    )
    assert after["ray_atelier_inference_replica_busy_seconds"] > before["ray_atelier_inference_replica_busy_seconds"]
    control_after = _scrape(cluster.control_plane_metrics_url)
    assert (
        control_after["atelier_control_plane_rpc_duration_seconds"]
        > control_before["atelier_control_plane_rpc_duration_seconds"]
    )
