"""`benchmarks/content_crypto.py --quick` runs and reports both arms and their ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_quick_mode_reports_throughput_of_both_arms_and_the_ratios() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "content_crypto.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert figures["blobs"] == 32 and figures["rounds"] == 1
    for arm in ("plain_put", "plain_get", "sealed_put", "sealed_get"):
        assert figures[f"{arm}_mb_s"] > 0
    assert figures["put_ratio"] > 0 and figures["get_ratio"] > 0
