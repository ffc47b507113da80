"""What does encryption at rest cost? Encrypt+store and fetch+decrypt vs a plain store, same run.

Both arms write and read the same blobs (random bytes of an image's size) through the local
blob store the control plane uses, in the same temporary directory; the encrypted arm goes
through `EncryptedBlobStore` with a per-account data key and the content id as associated
data, exactly as `content.store_content` and `content.get_content` do. The arms alternate
in rounds so drift on a shared machine hits both. Prints MB/s of each arm and the ratio
(encrypted / plain) for writes and reads.

    python benchmarks/content_crypto.py                    # 512 blobs of 256 KiB, 3 rounds
    python benchmarks/content_crypto.py --quick --json     # tiny mode, as the tests run it
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from uuid import UUID, uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from control_plane import crypto
from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.adapters.keystore import DataKey


def _timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _put_plain(store: LocalBlobStore, keys: list[str], payloads: list[bytes]) -> None:
    for key, data in zip(keys, payloads, strict=True):
        store.put(key, data)


def _get_plain(store: LocalBlobStore, keys: list[str]) -> None:
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


def run(blobs: int, size: int, rounds: int) -> dict[str, float | int]:
    """Measures both arms; returns MB/s per arm and operation, and the ratios."""
    payloads = [secrets.token_bytes(size) for _ in range(blobs)]
    account = uuid4()
    data_key = DataKey(uuid4(), account, crypto.new_data_key())
    samples: dict[str, list[float]] = {"plain_put": [], "plain_get": [], "sealed_put": [], "sealed_get": []}
    with tempfile.TemporaryDirectory(prefix="atelier-crypto-bench-") as root:
        for round_index in range(rounds):
            plain = LocalBlobStore(Path(root) / f"plain-{round_index}")
            sealed = EncryptedBlobStore(LocalBlobStore(Path(root) / f"sealed-{round_index}"))
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
    megabytes = blobs * size / 1e6
    result: dict[str, float | int] = {"blobs": blobs, "blob_bytes": size, "rounds": rounds}
    for name, times in samples.items():
        result[f"{name}_mb_s"] = round(megabytes / statistics.median(times), 1)
    result["put_ratio"] = round(float(result["sealed_put_mb_s"]) / float(result["plain_put_mb_s"]), 3)
    result["get_ratio"] = round(float(result["sealed_get_mb_s"]) / float(result["plain_get_mb_s"]), 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blobs", type=int, default=512, help="blobs per round (default 512)")
    parser.add_argument("--size", type=int, default=256 * 1024, help="bytes per blob (default 262144)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny mode: 32 blobs of 64 KiB, 1 round")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.quick:
        args.blobs, args.size, args.rounds = 32, 64 * 1024, 1
    if args.blobs < 1 or args.size < 1 or args.rounds < 1:
        parser.error("--blobs, --size and --rounds must be >= 1")
    result = run(args.blobs, args.size, args.rounds)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"{args.blobs} blobs x {args.size} bytes, {args.rounds} rounds (medians)")
        for op, label in (("put", "encrypt+store"), ("get", "fetch+decrypt")):
            plain, sealed, ratio = result[f"plain_{op}_mb_s"], result[f"sealed_{op}_mb_s"], result[f"{op}_ratio"]
            print(f"{op}: plain {plain:8.1f} MB/s   {label} {sealed:8.1f} MB/s   ratio {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
