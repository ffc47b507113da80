"""The CPU benchmark scripts run in their tiny modes and report sane figures (no cluster needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _run_json(script: str, *arguments: str, cache_dir: Path) -> dict:  # type: ignore[type-arg]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *arguments, "--cache-dir", str(cache_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        # As on a GPU machine without this project's install: the checkout itself is the package.
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_batching_benchmark_reports_both_arms_and_their_ratio(tmp_path: Path) -> None:
    report = _run_json("batching.py", "--requests", "8", "--steps", "2", "--rounds", "1", cache_dir=tmp_path)
    assert report["callers"] == 8
    assert report["unbatched_images_per_s"] > 0 and report["batched_images_per_s"] > 0
    assert report["throughput_ratio"] > 0
    assert 1 <= report["mean_batch_size"] <= 8


def test_diffusion_latency_tiny_mode_reports_per_backend_figures(tmp_path: Path) -> None:
    report = _run_json(
        "diffusion_latency.py",
        "--tiny",
        "--backends", "eager", "onnxruntime", "tensorrt",
        "--steps", "2", "--iterations", "1", "--batch", "2",
        cache_dir=tmp_path,
    )  # fmt: skip
    rows = {row["backend"]: row for row in report["results"]}
    assert set(rows) == {"diffusers-eager", "eager", "onnxruntime"}, "tiny mode leaves out tensorrt (GPU only)"
    for row in rows.values():
        assert row["model"] == "tiny-sd" and row["steps"] == 2
        assert row["s_per_image"] > 0 and row["images_per_s_batch2"] > 0
    for name in ("eager", "onnxruntime"):  # through the replica's scheduler, buckets and backend
        assert rows[name]["unet_ms_per_step"] > 0 and rows[name]["unet_ms_per_step_batch2"] > 0
        assert rows[name]["unet_gflops_per_step"] > 0 and rows[name]["warmup_s"] > 0


def test_output_scan_tiny_mode_reports_the_classifiers_cost_against_generation(tmp_path: Path) -> None:
    report = _run_json(
        "output_scan.py", "--tiny", "--steps", "2", "--iterations", "1", "--batch", "2", cache_dir=tmp_path
    )
    assert (report["model"], report["classifier"], report["batch"], report["steps"]) == (
        "tiny-sd",
        "tiny-safety-checker",
        2,
        2,
    )
    assert report["generation_ms_per_image"] > 0 and report["generation_with_scan_ms_per_image"] > 0
    assert report["scan_ms_per_image"] > 0
    assert report["scan_to_generation_ratio"] == pytest.approx(
        report["scan_ms_per_image"] / report["generation_ms_per_image"], rel=1e-2
    )
