"""The `atelier` command against the session's cluster, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import PIL.Image

from atelier.settings import ClusterSettings


def _atelier(settings: ClusterSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ATELIER_HOME": str(settings.home)}
    return subprocess.run(
        [sys.executable, "-m", "atelier.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_generate_writes_png_and_balance_drops_by_the_charge(cluster, cluster_settings, tmp_path: Path) -> None:
    created = _atelier(cluster_settings, "account", "create", "--credits", "5", "--birth-date", "1990-04-01", "--json")
    assert created.returncode == 0, created.stderr
    account_id = json.loads(created.stdout)["account_id"]

    out = tmp_path / "out.png"
    generated = _atelier(
        cluster_settings,
        "generate",
        "--account",
        account_id,
        "a red kite",
        "--seed",
        "3",
        "--steps",
        "5",
        "-o",
        str(out),
        "--json",
    )
    assert generated.returncode == 0, generated.stderr
    summary = json.loads(generated.stdout)
    assert PIL.Image.open(out).size == (64, 64)
    balance = json.loads(_atelier(cluster_settings, "credits", "balance", account_id, "--json").stdout)
    assert balance["available"] == 5 - summary["credits_charged"] == summary["credits_available"]


def test_errors_are_one_line_without_traceback(cluster, cluster_settings, tmp_path: Path) -> None:
    result = _atelier(cluster_settings, "generate", "--account", "not-a-uuid", "x", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 1
    assert result.stderr.strip() == "error: INVALID_ARGUMENT: account_id: must be a UUID, got 'not-a-uuid'"
    as_json = _atelier(cluster_settings, "credits", "balance", "00000000-0000-4000-8000-000000000000", "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["error"]["code"] == "NOT_FOUND"
    assert "Traceback" not in as_json.stdout + as_json.stderr


def test_status_reports_healthy(cluster, cluster_settings) -> None:
    result = _atelier(cluster_settings, "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["healthy"] is True
