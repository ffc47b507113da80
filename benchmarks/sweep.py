"""How fast does the retention sweeper delete, against a raw batched DELETE plus unlink? Same run.

Both arms get identical data (same ids, times, blobs: `seed_data.seed` with the same seed),
every row past the free tier's 30 days, with one blob file each, in a fresh database:

- raw: `DELETE FROM content WHERE content_id = ANY(ARRAY(SELECT ... ORDER BY created_at LIMIT n
  FOR UPDATE SKIP LOCKED)) RETURNING blob_key`, unlink each blob, commit; until nothing is left;
- sweeper: `sweeper.run_sweep` (per-tenant policy deadlines, export removals, audit row per
  batch, metrics), same batch size.

The arms run in alternating order over `--rounds` rounds; prints items/s of each and the
ratio (raw / sweeper: how many times slower the sweeper is; the target is <= 2).

    python benchmarks/sweep.py                      # 200,000 rows per arm and round
    python benchmarks/sweep.py --rows 2000 --json   # tiny mode, as the tests run it
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.seed_data import NOW, fresh_database, seed, server_url
from control_plane import crypto
from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.db.pool import Pool, open_pool
from control_plane.policy import PolicyProfile, PolicyRegistry
from control_plane.sweeper import SweepReason, run_sweep

RETENTION = timedelta(days=PolicyProfile().generated_retention_days or 30)

RAW_BATCH = """
DELETE FROM content WHERE content_id = ANY(ARRAY(
    SELECT content_id FROM content
    WHERE deleted_at IS NULL AND kind = 'generated' AND created_at <= %(cutoff)s
    ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
))
RETURNING blob_key
"""


def raw_delete(pool: Pool, blobs: LocalBlobStore, batch_size: int) -> int:
    """The baseline: batched DELETE ... RETURNING plus unlink, one transaction per batch."""
    deleted = 0
    with pool.connection() as conn:
        while True:
            with conn.transaction():
                keys = conn.execute(RAW_BATCH, {"cutoff": NOW - RETENTION, "limit": batch_size})
                rows = keys.fetchall()
                for (key,) in rows:
                    blobs.delete(key)
            deleted += len(rows)
            if len(rows) < batch_size:
                return deleted


def run(url: str, rows: int, accounts: int, batch_size: int, rounds: int) -> dict[str, float | int]:
    """Seeds, sweeps and measures both arms; returns items/s of each and the ratio."""
    samples: dict[str, list[float]] = {"raw": [], "sweeper": []}
    registry = PolicyRegistry(default=PolicyProfile())
    with tempfile.TemporaryDirectory(prefix="atelier-sweep-bench-") as tmp, fresh_database(url) as database:
        keys = PostgresKeyStore(crypto.ensure_master_key_file(Path(tmp) / "master.key"))
        with open_pool(database, min_size=1, max_size=4) as pool:
            for round_index in range(rounds):
                order = ("raw", "sweeper") if round_index % 2 == 0 else ("sweeper", "raw")
                for arm in order:
                    root = Path(tmp) / f"blobs-{arm}-{round_index}"
                    with pool.connection() as conn:
                        conn.execute("TRUNCATE content, accounts, account_keys, consents, tenants, audit_log CASCADE")
                    seed(pool, keys, rows=rows, accounts=accounts, expired=True, blob_root=root)
                    blobs = LocalBlobStore(root)
                    started = time.perf_counter()
                    if arm == "raw":
                        deleted = raw_delete(pool, blobs, batch_size)
                    else:
                        report = run_sweep(pool, blobs, registry, now=NOW, batch_size=batch_size)
                        deleted = report.deleted[SweepReason.GENERATED_RETENTION]
                    seconds = time.perf_counter() - started
                    if deleted != rows or any(root.rglob("*%2F*")):
                        raise RuntimeError(f"{arm} deleted {deleted} of {rows} rows or left blobs behind")
                    samples[arm].append(rows / seconds)
                    shutil.rmtree(root)
    raw, sweeper = statistics.median(samples["raw"]), statistics.median(samples["sweeper"])
    return {
        "rows": rows,
        "batch_size": batch_size,
        "rounds": rounds,
        "raw_items_per_s": round(raw),
        "sweeper_items_per_s": round(sweeper),
        "slowdown": round(raw / sweeper, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="expired rows (and blobs) per arm and round")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating which arm goes first")
    parser.add_argument("--database-url", help="server to create the benchmark database on")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(server_url(args.database_url), args.rows, args.accounts, args.batch_size, args.rounds)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['rows']} expired rows, batch {result['batch_size']}: raw DELETE+unlink "
            f"{result['raw_items_per_s']:,} items/s, sweeper {result['sweeper_items_per_s']:,} items/s "
            f"(sweeper takes {result['slowdown']}x as long)"
        )


if __name__ == "__main__":
    main()
