"""The benchmark scripts run (in tiny mode) against the session's cluster and report sane figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serving_overhead_reports_latency_and_throughput_ratio(cluster, cluster_settings) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "serving_overhead.py"),
            "--home",
            str(cluster_settings.home),
            "--iterations",
            "3",
            "--steps",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(result.stdout)["results"]
    assert row["steps"] == 1
    assert 0 < row["direct_p50_ms"] <= row["direct_p95_ms"]
    assert 0 < row["served_p50_ms"] <= row["served_p95_ms"]
    assert row["throughput_ratio"] > 0
