"""A sweeper process for the crash-resume test: sweeps, and stops dead in the middle of a batch.

Usage: python -m tests.integration.control_plane._sweep_child DATABASE_URL BLOB_DIR AS_OF BATCH_SIZE PAUSE_AT

Unlinks blobs as the real sweeper does until the PAUSE_AT-th unlink, then prints "paused" and
blocks on stdin, inside the batch's open transaction, until the test SIGKILLs it.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from control_plane.bootstrap import load_policies
from control_plane.config import ControlPlaneConfig
from control_plane.db.pool import open_pool
from control_plane.sweeper import SweepReason, run_sweep
from tests._pausing_blob_store import PausingBlobStore


def main() -> None:
    url, blob_dir, as_of, batch_size, pause_at = sys.argv[1:6]
    config = ControlPlaneConfig(database_url=url, blob_dir=Path(blob_dir), metrics_port=0)
    with open_pool(url, min_size=1, max_size=2) as pool:

        def progress(reason: SweepReason, count: int) -> None:
            print(f"batch {reason.value} {count}", flush=True)

        run_sweep(
            pool,
            PausingBlobStore(Path(blob_dir), pause_on="delete", pause_at=int(pause_at)),
            load_policies(config),
            now=datetime.fromisoformat(as_of),
            batch_size=int(batch_size),
            on_batch=progress,
            # One batch loop, so the batches (and where the pause falls) come in a fixed order;
            # batches under 256 items unlink in their own thread, in order, too.
            workers=1,
        )
    print("done", flush=True)


if __name__ == "__main__":
    main()
