"""A training-export process for the crash test: exports, and stops dead in the middle.

Usage: python -m tests.faults._export_child DATABASE_URL BLOB_DIR MASTER_KEY_FILE OUTPUT_DIR AS_OF PAUSE_AT

Reads images through the blob store as the real export does until the PAUSE_AT-th read, then
prints "paused" and blocks on stdin, inside the export's open transaction with its staging
directory written so far, until the test SIGKILLs it.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.audit import SYSTEM
from control_plane.bootstrap import load_policies
from control_plane.config import ControlPlaneConfig
from control_plane.crypto import read_master_key_file
from control_plane.db.pool import open_pool
from control_plane.training_exports import create_training_export
from tests._pausing_blob_store import PausingBlobStore

APPLICATION_NAME = "atelier-faults-export-child"
"""The child's `application_name`, so the test can tell when its session has ended."""


def main() -> None:
    url, blob_dir, master_key_file, output_dir, as_of, pause_at = sys.argv[1:7]
    config = ControlPlaneConfig(database_url=url, blob_dir=Path(blob_dir), metrics_port=0)
    keys = PostgresKeyStore(read_master_key_file(Path(master_key_file)), Path(master_key_file))
    with open_pool(url, min_size=1, max_size=2, name=APPLICATION_NAME) as pool:
        create_training_export(
            pool,
            EncryptedBlobStore(PausingBlobStore(Path(blob_dir), pause_on="get", pause_at=int(pause_at))),
            keys,
            load_policies(config),
            output_dir=Path(output_dir),
            actor=SYSTEM,
            now=datetime.fromisoformat(as_of),
            rows_per_file=3,
        )
    print("done", flush=True)


if __name__ == "__main__":
    main()
