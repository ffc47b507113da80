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
    # Every part of the served path is found and charged its CPU.
    assert row["direct_cpu_ms_per_image"] > 0
    by_process = row["served_cpu_ms_per_image_by_process"]
    assert {"model replica", "gateway", "serve proxy", "control plane", "clients"} <= by_process.keys()
    assert all(by_process[part] > 0 for part in ("model replica", "gateway", "control plane", "clients"))
    # Marking is timed on its own and is part of the store stage it sits in.
    assert row["marking_p50_ms"] > 0
    assert row["stage_store_p50_ms"] > 0


def _run_json(*arguments: str) -> dict:  # type: ignore[type-arg]
    result = subprocess.run(
        [sys.executable, *arguments, "--json"], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_serving_overhead_times_the_stream_to_first_progress_and_result(cluster, cluster_settings) -> None:
    (row,) = _run_json(
        str(ROOT / "benchmarks" / "serving_overhead.py"),
        *("--home", str(cluster_settings.home), "--iterations", "3", "--steps", "2"),
    )["results"]
    assert 0 < row["direct_first_step_p50_ms"] < row["direct_p50_ms"]
    assert 0 < row["stream_first_progress_p50_ms"] <= row["stream_first_progress_p95_ms"]
    # The first of 2 steps is reported before the stream's result.
    assert row["stream_first_progress_p50_ms"] < row["stream_p50_ms"] <= row["stream_p95_ms"]


def test_load_sweep_reports_latency_errors_and_knee_per_offered_rate(cluster, cluster_settings) -> None:
    report = _run_json(
        str(ROOT / "benchmarks" / "load.py"),
        *("--home", str(cluster_settings.home), "--rates", "1,2", "--duration", "4", "--steps", "1"),
        *("--accounts", "2", "--mix", "generate=2,stream=1,balance=1", "--p99-bound-ms", "120000"),
        *("--overload", "1.5"),
    )
    assert report["baseline_direct_images_per_s"] > 0
    first = report["rows"][0]
    assert first["offered_rps"] == 1.0
    # A light load on a healthy cluster: every request answered OK, kinds all exercised over the sweep.
    assert first["sent"] > 0 and first["ok"] == first["sent"] and first["errors"] == {}
    assert 0 < first["p50_ms"] <= first["p95_ms"] <= first["p99_ms"]
    assert first["achieved_rps"] > 0
    kinds = {kind for row in report["rows"] for kind in row["by_kind"]}
    assert kinds == {"generate", "stream", "balance"}
    assert report["knee"] is None or report["knee"] in report["rows"]
    if report["knee"] is not None:
        # One run at 1.5x the knee's offered rate, judged against the knee (whatever the verdict on a
        # shared machine): goodput and p99 ratios, and how fast refusals came.
        (overload,) = report["overload"]
        assert overload["knee_multiple"] == 1.5
        assert overload["offered_rps"] == round(1.5 * report["knee"]["offered_rps"], 3)
        assert overload["goodput_vs_knee"] > 0 and isinstance(overload["holds"], bool)


def test_load_soak_samples_memory_of_every_cluster_process(cluster, cluster_settings, tmp_path) -> None:
    report = _run_json(
        str(ROOT / "benchmarks" / "load.py"),
        *("--home", str(cluster_settings.home), "--soak", "--minutes", "0.2", "--rate", "1"),
        *("--sample-every", "3", "--steps", "1", "--accounts", "1", "--out", str(tmp_path)),
    )
    assert report["load"]["ok"] > 0 and report["load"]["errors"] == {}
    labels = {process["label"] for process in report["processes"]}
    assert {"control-plane", "gcs_server", "raylet", "ray::ServeController", "ray::ProxyActor"} <= labels
    replicas = {label for label in labels if label.startswith("ray::ServeReplica")}
    assert any("Gateway" in label for label in replicas) and any("DiffusionModel" in label for label in replicas)
    for process in report["processes"]:
        assert 0 < process["first_mb"] <= process["max_mb"] and process["last_mb"] <= process["max_mb"]
        assert 0 <= process["first_private_mb"] <= process["first_mb"]
    control_plane = next(p for p in report["processes"] if p["label"] == "control-plane")
    assert control_plane["samples"] >= 3  # sampled from start to end, every 3 s over 12 s
    rows = (tmp_path / "memory.csv").read_text().splitlines()
    assert rows[0] == "elapsed_s,pid,label,rss_mb,private_mb" and len(rows) > len(report["processes"])
    assert json.loads((tmp_path / "summary.json").read_text())["processes"] == report["processes"]
