"""Loads N content rows (and optionally their blobs) for the retention and export benchmarks.

Rows are real ones: accounts with a data key each (wrapped by a master key), prompts sealed
with it, generated PNG-sized rows with parameters, training consent granted and public, so
every row is eligible for training (or, with `--expired`, all past the free tier's 30 days).
Rows go in with `COPY ... FROM STDIN`; blobs, when asked for, are written straight into the
local blob store's layout (no fsync: a benchmark's data need not survive a crash).

    python benchmarks/seed_data.py                          # 1,000,000 rows into a fresh database
    python benchmarks/seed_data.py --rows 10000 --expired --blob-dir /tmp/blobs --keep
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from control_plane import crypto
from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.audit import SYSTEM
from control_plane.db.migrations import apply_migrations
from control_plane.db.pool import Pool, open_pool

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
"""The benchmarks' "now": seeded rows are dated relative to it."""
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PARAMETERS = '{"model": "tiny-sd", "width": 512, "height": 512, "steps": 20, "guidance_scale": 7.5, "seed": 7}'


@dataclass(frozen=True)
class Seeded:
    """What `seed` loaded."""

    rows: int
    accounts: int
    blob_keys: int
    seconds: float


def server_url(explicit: str | None) -> str:
    """`--database-url`, else ATELIER_DATABASE_URL, else the local server on 5432."""
    return explicit or os.environ.get("ATELIER_DATABASE_URL") or DEFAULT_URL


@contextlib.contextmanager
def fresh_database(url: str, keep: bool = False) -> Iterator[str]:
    """A new, migrated database on the server at `url`; dropped afterwards unless `keep`."""
    name = f"atelier_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database = psycopg.conninfo.make_conninfo(url, dbname=name)
    try:
        with open_pool(database, min_size=1, max_size=4) as pool:
            apply_migrations(pool)
        yield database
    finally:
        if not keep:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def seed(
    pool: Pool,
    keys: PostgresKeyStore,
    *,
    rows: int,
    accounts: int,
    expired: bool,
    blob_root: Path | None,
    rng_seed: int = 7,
) -> Seeded:
    """Loads `rows` content rows spread over `accounts` free-tier accounts of one tenant.

    Args:
        expired: Date every row 31..61 days before NOW (all due for the 30-day sweep);
            otherwise within the last day (all eligible for training).
        blob_root: Also write a small blob per row into a LocalBlobStore layout there.
        rng_seed: Same seed, same ids, times and bytes: two calls load identical data.
    """
    started = time.perf_counter()
    rng = random.Random(rng_seed)
    with pool.connection() as conn:
        tenant = conn.execute(
            "INSERT INTO tenants (name, created_at) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING tenant_id",
            (f"bench-{rng_seed}", NOW),
        ).fetchone()
        if tenant is None:
            raise RuntimeError("no tenant")
        account_ids = [UUID(int=rng.getrandbits(128), version=4) for _ in range(accounts)]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO accounts (account_id, tenant_id, created_at, last_active_at) VALUES (%s, %s, %s, %s)",
                [(a, tenant[0], NOW - timedelta(days=90), NOW) for a in account_ids],
            )
            cur.executemany(
                "INSERT INTO consents (account_id, purpose, granted, method, source, recorded_at) "
                "VALUES (%s, 'training', true, 'settings', 'bench', %s)",
                [(a, NOW - timedelta(days=90)) for a in account_ids],
            )
        conn.commit()
        data_keys = [keys.live_data_key(conn, a, actor=SYSTEM, now=NOW) for a in account_ids]
        store = LocalBlobStore(blob_root) if blob_root is not None else None
        made_dirs: set[Path] = set()
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY content (content_id, account_id, kind, media_type, visibility, blob_key, sha256, size_bytes, "
                "parameters, model, created_at, encryption_key_id, prompt_sealed) FROM STDIN"
            ) as copy,
        ):
            for index in range(rows):
                account = index % accounts
                content_id = UUID(int=rng.getrandbits(128), version=4)
                account_id = account_ids[account]
                age = (
                    timedelta(days=31, seconds=rng.randrange(30 * 86400))
                    if expired
                    else timedelta(seconds=rng.randrange(86400))
                )
                blob_key = f"{account_id}/{content_id}"
                prompt = f"a lighthouse at dusk, oil painting, variation {index}".encode()
                copy.write_row(
                    (
                        content_id,
                        account_id,
                        "generated",
                        "image/png",
                        "public",
                        blob_key,
                        f"{rng.getrandbits(256):064x}",
                        200_000,
                        PARAMETERS,
                        "tiny-sd",
                        NOW - age,
                        data_keys[account].key_id,
                        crypto.seal(data_keys[account].key, prompt, crypto.prompt_context(content_id)),
                    )
                )
                if store is not None:
                    path = store.path_for(blob_key)
                    if path.parent not in made_dirs:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        made_dirs.add(path.parent)
                    path.write_bytes(b"sealed-image-bytes")
        conn.commit()
        conn.execute("ANALYZE content")
        conn.execute("ANALYZE accounts")
    return Seeded(rows, accounts, rows if blob_root is not None else 0, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="content rows (default 1,000,000)")
    parser.add_argument("--accounts", type=int, default=1000, help="accounts the rows spread over")
    parser.add_argument("--expired", action="store_true", help="date rows past the 30-day retention")
    parser.add_argument("--blob-dir", type=Path, help="also write a blob per row under this directory")
    parser.add_argument("--database-url", help=f"server to create the database on (default {DEFAULT_URL})")
    parser.add_argument("--keep", action="store_true", help="keep the database and print its URL")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fresh_database(server_url(args.database_url), keep=args.keep) as url:
        master = crypto.ensure_master_key_file(Path(tmp) / "master.key")
        with open_pool(url, min_size=1, max_size=4) as pool:
            seeded = seed(
                pool,
                PostgresKeyStore(master),
                rows=args.rows,
                accounts=args.accounts,
                expired=args.expired,
                blob_root=args.blob_dir,
            )
    result = {
        "rows": seeded.rows,
        "accounts": seeded.accounts,
        "blobs": seeded.blob_keys,
        "seconds": round(seeded.seconds, 2),
        "rows_per_s": round(seeded.rows / seeded.seconds),
        "database_url": url if args.keep else None,
    }
    print(json.dumps(result) if args.json else f"seeded {seeded.rows} rows in {seeded.seconds:.1f} s")


if __name__ == "__main__":
    main()
