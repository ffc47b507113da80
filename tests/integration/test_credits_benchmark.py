"""benchmarks/credits.py runs in tiny mode, reports its figures, and finds no overspend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_credits_benchmark_reports_ratios_and_no_overspend() -> None:
    args = [sys.executable, str(ROOT / "benchmarks" / "credits.py"), "--seconds", "1", "--clients", "2", "--json"]
    if url := os.environ.get("ATELIER_TEST_DATABASE_URL"):
        args += ["--database-url", url]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert figures["pgbench_one_row_update_tps"] > 0
    assert figures["sql_reserve_commit_pairs_per_s"] > 0 and figures["grpc_reserve_commit_pairs_per_s"] > 0
    # Empty calls are the transport's ceiling: credit pairs, which also touch the database, stay below it.
    assert 0 < figures["grpc_ratio_to_empty_pairs"] < 1
    assert figures["race_reservations_granted"] == figures["race_balance"] == 10
    assert figures["race_balance_after"] == {"total": 10, "held": 10, "available": 0}
    assert figures["overspent"] is False
