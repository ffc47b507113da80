"""The retention and export benchmarks run in tiny mode and report sane figures."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.control_plane._support import REPO_ROOT


def _run(script: str, postgres_url: str, *args: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), "--database-url", postgres_url, *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_seed_data_loads_the_rows_asked_for(postgres_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    row = _run(
        "seed_data.py", postgres_url, "--rows", "500", "--accounts", "10", "--expired", "--blob-dir", str(tmp_path)
    )
    assert (row["rows"], row["blobs"]) == (500, 500)


def test_sweep_benchmark_compares_the_sweeper_with_a_raw_delete(postgres_url: str) -> None:
    row = _run("sweep.py", postgres_url, "--rows", "1000", "--accounts", "10", "--batch-size", "300", "--rounds", "2")
    assert row["raw_items_per_s"] > 0 and row["sweeper_items_per_s"] > 0 and row["slowdown"] > 0


def test_export_benchmark_reports_rows_per_second(postgres_url: str) -> None:
    row = _run("export.py", postgres_url, "--rows", "1000", "--accounts", "10")
    assert row["export_rows_per_s"] > 0 and row["raw_copy_rows_per_s"] > 0
    assert row["removals_reconcile_s"] > 0
