"""How fast does the training export write eligible rows to Parquet? Against a raw COPY, same run.

Seeds N eligible rows (consenting accounts, public, recent; prompts sealed with each account's
data key) in a fresh database, then measures:

- export: `training_exports.create_training_export` without images (metadata rows: salted ids,
  SHA-256, model, parameters, decrypted prompt), which also judges eligibility per tenant
  policy, records every item in `export_items` and writes the manifest;
- baseline: `COPY (SELECT <the same columns> FROM content) TO STDOUT` into pyarrow's CSV reader
  and a Parquet writer, with no eligibility, no item records and no decryption;
- removals: one `removals.reconcile_removals` of the export (what every `ListRemovals` call and
  sweep pass runs first), with nothing to append: the cost of judging every exported item again.

    python benchmarks/export.py                      # 1,000,000 rows
    python benchmarks/export.py --rows 2000 --json   # tiny mode, as the tests run it
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from benchmarks.seed_data import NOW, fresh_database, seed, server_url
from control_plane import crypto
from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.audit import SYSTEM
from control_plane.db.pool import Pool, open_pool
from control_plane.policy import PolicyProfile, PolicyRegistry
from control_plane.removals import reconcile_removals
from control_plane.training_exports import create_training_export


def raw_copy(pool: Pool, path: Path) -> int:
    """The baseline: COPY of the content columns into pyarrow and one Parquet file."""
    with pool.connection() as conn, conn.cursor() as cur:
        buffer = io.BytesIO()
        with cur.copy(
            "COPY (SELECT content_id, account_id, sha256, model, parameters::text, encode(prompt_sealed, 'hex') "
            "FROM content) TO STDOUT (FORMAT csv)"
        ) as copy:
            for chunk in copy:
                buffer.write(chunk)
        buffer.seek(0)
        table = pa_csv.read_csv(
            buffer,
            read_options=pa_csv.ReadOptions(column_names=["a", "b", "c", "d", "e", "f"]),
        )
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def run(url: str, rows: int, accounts: int) -> dict[str, float | int]:
    """Seeds and measures both arms; returns rows/s of each."""
    with tempfile.TemporaryDirectory(prefix="atelier-export-bench-") as tmp, fresh_database(url) as database:
        keys = PostgresKeyStore(crypto.ensure_master_key_file(Path(tmp) / "master.key"))
        with open_pool(database, min_size=1, max_size=4) as pool:
            registry = PolicyRegistry(default=PolicyProfile())
            seeded = seed(pool, keys, rows=rows, accounts=accounts, expired=False, blob_root=None)
            started = time.perf_counter()
            copied = raw_copy(pool, Path(tmp) / "raw.parquet")
            raw_seconds = time.perf_counter() - started
            started = time.perf_counter()
            export = create_training_export(
                pool,
                EncryptedBlobStore(LocalBlobStore(Path(tmp) / "blobs")),
                keys,
                registry,
                output_dir=Path(tmp) / "exports",
                actor=SYSTEM,
                now=NOW,
                include_images=False,
            )
            export_seconds = time.perf_counter() - started
            with pool.connection() as conn:
                started = time.perf_counter()
                appended = reconcile_removals(conn, registry, now=NOW, export_id=export.export_id)
                reconcile_seconds = time.perf_counter() - started
    if appended:
        raise RuntimeError(f"nothing became ineligible, yet reconciling appended {appended} removals")
    if export.item_count != rows or copied != rows:
        raise RuntimeError(f"exported {export.item_count} and copied {copied} of {rows} rows")
    return {
        "rows": rows,
        "seed_rows_per_s": round(rows / seeded.seconds),
        "raw_copy_rows_per_s": round(rows / raw_seconds),
        "export_rows_per_s": round(rows / export_seconds),
        "export_vs_raw": round(raw_seconds / export_seconds, 2),
        "removals_reconcile_s": round(reconcile_seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="eligible rows to seed and export")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--database-url", help="server to create the benchmark database on")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(server_url(args.database_url), args.rows, args.accounts)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['rows']:,} eligible rows: export {result['export_rows_per_s']:,} rows/s to Parquet, "
            f"raw COPY {result['raw_copy_rows_per_s']:,} rows/s (export at {result['export_vs_raw']}x of raw); "
            f"reconciling its removal manifest takes {result['removals_reconcile_s']} s"
        )


if __name__ == "__main__":
    main()
