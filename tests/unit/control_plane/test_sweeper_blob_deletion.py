"""The sweeper's blob deletion: every blob of a batch goes, in threads or not, and errors surface."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.sweeper import delete_blobs


class FailingBlobStore(LocalBlobStore):
    """Refuses to delete one key; deletes the others."""

    def __init__(self, root: Path, refuse: str) -> None:
        super().__init__(root)
        self._refuse = refuse

    def delete(self, key: str) -> None:
        if key == self._refuse:
            raise PermissionError(key)
        super().delete(key)


def _stored(store: LocalBlobStore, count: int) -> list[str]:
    keys = [f"account-{i % 7}/item-{i}" for i in range(count)]
    for key in keys:
        store.put(key, b"sealed")
    return keys


@pytest.mark.parametrize("threads", [0, 4])
def test_every_blob_of_a_batch_is_deleted_and_missing_ones_are_skipped(tmp_path: Path, threads: int) -> None:
    store = LocalBlobStore(tmp_path)
    keys = _stored(store, 1000)
    with ThreadPoolExecutor(threads or 1) as pool:
        delete_blobs(store, [*keys, "account-0/never-stored"], pool if threads else None)
    assert not any(store.exists(key) for key in keys)


def test_a_failed_delete_is_raised_after_the_other_slices_finished(tmp_path: Path) -> None:
    store = FailingBlobStore(tmp_path, refuse="account-3/item-500")
    keys = _stored(store, 1000)
    with ThreadPoolExecutor(4) as pool, pytest.raises(PermissionError):
        delete_blobs(store, keys, pool)
    # The refusing slice (items 256..511) stops at its error; every other slice ran to its end.
    assert store.exists("account-3/item-500")
    assert not any(store.exists(key) for key in keys[:256] + keys[512:])
