"""The whole control-plane server process SIGKILLed during its periodic retention sweep.

Scenario: 240 generated images of a free account are past their 30-day retention, 16 of a
premium account are not. `python -m control_plane serve` starts with its built-in sweeper
(the first pass runs at once); as soon as the first blob of the pass disappears, the process
is SIGKILLed, most likely inside the batch's open transaction (the exact point is the
scheduler's: the deterministic mid-batch kill is test_retention_sweep's crash-resume test).
Then a new server process starts. Expected: the killed pass's uncommitted batch rolled
back, and the next pass finishes it: every expired item is deleted exactly once (the audit
rows count 240, not more), none of their blobs is left, and every premium item and its blob
is untouched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

from protos.atelier.v1 import control_plane_pb2 as pb
from tests.faults._support import control_plane_process, free_port
from tests.integration.control_plane._support import REPO_ROOT
from tests.integration.control_plane._training import (
    audited_sweep_count,
    audited_sweeps_by_reason,
    iter_ids,
    live_ids,
    store,
    sweep_totals,
)

EXPIRED_ITEMS = 240
KEPT_ITEMS = 16


def _blob_files(blob_dir: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(blob_dir))


def test_a_server_killed_mid_sweep_resumes_and_deletes_each_item_once(  # type: ignore[no-untyped-def]
    pool, blobs, clock, stub, operator, make_account, database_url, blob_dir, master_key_file, tmp_path: Path
) -> None:
    # Content 60 days old by the wall clock, which the server's sweeper follows.
    clock.set(datetime.now(UTC) - timedelta(days=60))
    free, premium = make_account(credits=1000), make_account(credits=100, tier=pb.TIER_PREMIUM)
    expired = set(iter_ids(store(stub, operator, free, EXPIRED_ITEMS)))
    kept = set(iter_ids(store(stub, operator, premium, KEPT_ITEMS, seed=5000)))
    with pool.connection() as conn:
        keys: dict[UUID, str] = dict(conn.execute("SELECT content_id, blob_key FROM content").fetchall())  # type: ignore[arg-type]
    files_before = _blob_files(blob_dir)
    env = {
        "ATELIER_DATABASE_URL": database_url,
        "ATELIER_HOME": str(tmp_path / "home"),
        "ATELIER_BLOB_DIR": str(blob_dir),
        "ATELIER_MASTER_KEY_FILE": str(master_key_file),
        "ATELIER_SWEEP_INTERVAL_S": "1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "control_plane", "serve"],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            **env,
            "ATELIER_CONTROL_PLANE_LISTEN": f"127.0.0.1:{free_port()}",
            "ATELIER_CONTROL_PLANE_METRICS_PORT": "0",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while _blob_files(blob_dir) == files_before:
            assert server.poll() is None and time.monotonic() < deadline, "the server never swept"
            time.sleep(0.001)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)

    survivors = live_ids(pool) & expired
    print(f"killed with {len(survivors)} of {EXPIRED_ITEMS} expired rows still present")
    assert audited_sweep_count(pool) + len(survivors) == EXPIRED_ITEMS, "a committed batch was not counted once"
    assert sweep_totals(pool) == audited_sweeps_by_reason(pool), "the killed batch left the totals off the audit"

    with control_plane_process(env, tmp_path / "restarted.log"):
        deadline = time.monotonic() + 60
        while live_ids(pool) != kept:
            assert time.monotonic() < deadline, "the restarted server did not finish the sweep"
            time.sleep(0.2)

    assert audited_sweep_count(pool) == EXPIRED_ITEMS, "an item was deleted (or counted) twice"
    assert sweep_totals(pool) == audited_sweeps_by_reason(pool), "the totals /metrics reads are off the audit"
    assert not any(blobs.exists(keys[c]) for c in expired), "a blob of a deleted item is left"
    assert all(blobs.exists(keys[c]) for c in kept)
