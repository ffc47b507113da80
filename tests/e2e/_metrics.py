"""Waiting on the inference metrics a cluster exports (Ray exports them every few seconds)."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def wait_for_requests_counted(metrics_url: str, method: str, code: str) -> None:
    """Waits up to a minute until the gateway's request counter has a request of `method` ending `code`."""
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            text = response.read().decode()
        counted = [
            sample
            for family in text_string_to_metric_families(text)
            if family.name == "ray_atelier_inference_requests"
            for sample in family.samples
            if sample.labels.get("method") == method and sample.labels.get("code") == code and sample.value > 0
        ]
        if counted:
            return
        assert time.monotonic() < deadline, f"no {method} request was counted as {code}"
        time.sleep(0.5)
