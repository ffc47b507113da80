"""Training exports killed mid-way: nothing half-done is visible, and the next run is complete.

Scenarios (real PostgreSQL, real gRPC, a real export process):

1. `create_training_export` runs in its own process and is SIGKILLed in the middle (while it
   reads images, inside its open transaction, its staging directory on disk). Afterwards no
   export directory is visible and the database holds no export and no export items (the
   transaction rolled back). The next export in the same directory clears the leftover
   staging directory and is complete: every eligible item exactly once, its manifest
   present, and its removal manifest correct (an opt-out after it lists exactly that
   account's items); the killed export's id is unknown to ListRemovals.
2. A process killed after the export committed but before its directory was renamed into
   place (a window of one rename; the state is made by renaming a finished export back to
   its staging name): the next export puts the committed one in place, manifest and all.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from control_plane.training_exports import MANIFEST_NAME, STAGING_PREFIX, TrainingExport
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import training_pb2 as tpb
from protos.atelier.v1.training_pb2_grpc import TrainingDataStub
from tests.faults._export_child import APPLICATION_NAME
from tests.integration.control_plane._privacy import use_profile
from tests.integration.control_plane._support import REPO_ROOT, png_bytes
from tests.integration.control_plane._training import export_training, store

OPT_OUT_PROFILE = "opt-out-guardian-consent"
"""Public content is eligible unless its owner opts out: no consent calls needed."""
ITEMS_PER_ACCOUNT = 6


def _eligible_content(pool, policies, stub, operator, clock, make_account) -> tuple[list[str], set[str]]:  # type: ignore[no-untyped-def]
    use_profile(pool, policies, operator, OPT_OUT_PROFILE, clock.now())
    accounts = [make_account(credits=50) for _ in range(2)]
    for index, account in enumerate(accounts):
        store(stub, operator, account, ITEMS_PER_ACCOUNT, seed=100 * index, visibility=common_pb2.VISIBILITY_PUBLIC)
    hashes = {
        hashlib.sha256(png_bytes(100 * index + i)).hexdigest()
        for index in range(len(accounts))
        for i in range(ITEMS_PER_ACCOUNT)
    }
    return accounts, hashes


def _wait_until_session_gone(pool, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    # The killed child's backend rolls back and ends once it reads EOF from the dead socket.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APPLICATION_NAME,)
            ).fetchone()
        if row == (0,):
            return
        time.sleep(0.05)
    raise AssertionError("the killed export's database session did not end")


def _assert_complete(export: TrainingExport, hashes: set[str]) -> None:
    table = pq.read_table(export.directory)
    assert sorted(table.column("sha256").to_pylist()) == sorted(hashes), "an item is missing or doubled"
    assert len(set(table.column("item_id").to_pylist())) == len(hashes)
    manifest = json.loads((export.directory / MANIFEST_NAME).read_text())
    assert manifest["export_id"] == str(export.export_id)
    assert manifest["counts"] == {"items": len(hashes), "files": len(export.files)}
    assert sorted(f["name"] for f in manifest["files"]) == sorted(p.name for p in export.directory.glob("*.parquet"))


def test_an_export_killed_mid_way_leaves_nothing_visible_and_the_rerun_is_complete(  # type: ignore[no-untyped-def]
    pool,
    blobs,
    keys,
    policies,
    clock,
    stub,
    channel,
    operator,
    make_account,
    database_url,
    blob_dir,
    master_key_file,
    tmp_path: Path,
) -> None:
    accounts, hashes = _eligible_content(pool, policies, stub, operator, clock, make_account)
    output = tmp_path / "exports"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.faults._export_child",
            database_url,
            str(blob_dir),
            str(master_key_file),
            str(output),
            clock.now().isoformat(),
            str(len(hashes) // 2),
        ],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "paused"
        staging = [p for p in output.iterdir()]
        assert [p.name.startswith(STAGING_PREFIX) for p in staging] == [True], "an export was visible mid-way"
        killed_export_id = staging[0].name.removeprefix(STAGING_PREFIX)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=60)
    _wait_until_session_gone(pool)

    # Nothing of the killed export counts: no visible directory, no rows.
    assert not [p for p in output.iterdir() if not p.name.startswith(".")]
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM training_exports").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM export_items").fetchone() == (0,)

    export = export_training(pool, blobs, keys, policies, now=clock.now(), output_dir=output, rows_per_file=3)

    assert [p.name for p in output.iterdir()] == [str(export.export_id)], "the staging directory was left"
    _assert_complete(export, hashes)
    training = TrainingDataStub(channel)
    training.OptOut(tpb.OptOutRequest(account_id=accounts[0], source="web"), metadata=operator.metadata)
    removals = training.ListRemovals(
        tpb.ListRemovalsRequest(export_id=str(export.export_id)), metadata=operator.metadata
    )
    opted_out = {
        row["item_id"]
        for row in pq.read_table(export.directory).to_pylist()
        if row["sha256"] in {hashlib.sha256(png_bytes(i)).hexdigest() for i in range(ITEMS_PER_ACCOUNT)}
    }
    assert {r.item_id for r in removals.removals} == opted_out and len(opted_out) == ITEMS_PER_ACCOUNT
    with pytest.raises(grpc.RpcError) as unknown:
        training.ListRemovals(tpb.ListRemovalsRequest(export_id=killed_export_id), metadata=operator.metadata)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_an_export_committed_but_not_yet_renamed_is_put_in_place_by_the_next(  # type: ignore[no-untyped-def]
    pool, blobs, keys, policies, clock, stub, operator, make_account, tmp_path: Path
) -> None:
    _, hashes = _eligible_content(pool, policies, stub, operator, clock, make_account)
    output = tmp_path / "exports"
    first = export_training(pool, blobs, keys, policies, now=clock.now(), output_dir=output, rows_per_file=3)
    # The state a kill between the commit and the rename leaves.
    first.directory.rename(output / f"{STAGING_PREFIX}{first.export_id}")

    second = export_training(pool, blobs, keys, policies, now=clock.now(), output_dir=output, rows_per_file=3)

    assert sorted(p.name for p in output.iterdir()) == sorted([str(first.export_id), str(second.export_id)])
    _assert_complete(first, hashes)
    _assert_complete(second, hashes)
