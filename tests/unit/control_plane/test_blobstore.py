"""LocalBlobStore: round trips, atomic replacement, sharding, and key validation."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from control_plane.adapters.blobstore import BlobNotFoundError, LocalBlobStore, validate_blob_key

KEY = "0b9f6c1e-6f1a-4a4e-9d1b-2f7c3d1c9a10/7d3f0a52-4a51-4c36-a5a3-8f3ad1f1e0b2"


def test_put_then_get_returns_the_same_bytes(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put(KEY, b"\x89PNG payload")
    assert store.exists(KEY)
    assert store.get(KEY) == b"\x89PNG payload"


def test_put_replaces_a_blob_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put(KEY, b"first")
    store.put(KEY, b"second")
    assert store.get(KEY) == b"second"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [store.path_for(KEY)]


def test_blobs_are_sharded_two_levels_deep(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    path = store.path_for(KEY)
    assert path.parent.parent.parent == tmp_path
    assert len(path.parent.name) == len(path.parent.parent.name) == 2
    assert "/" not in path.name


def test_delete_is_idempotent_and_get_of_a_missing_blob_raises(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put(KEY, b"x")
    store.delete(KEY)
    store.delete(KEY)
    assert not store.exists(KEY)
    with pytest.raises(BlobNotFoundError):
        store.get(KEY)


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../escape", "a/../b", "a//b", "a/", ".hidden", "a b", "x" * 513])
def test_keys_that_could_escape_the_root_or_are_malformed_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        LocalBlobStore(tmp_path).put(key, b"x")


def test_valid_keys_pass_through() -> None:
    assert validate_blob_key(KEY) == KEY


def test_a_put_flushes_to_disk_once_and_the_blob_is_in_place_when_it_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalBlobStore(tmp_path)
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        # The one flush comes after the rename: it is what makes the name durable too.
        synced.append(store.path_for(KEY).exists())
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    store.put(KEY, b"payload")
    assert synced == [True]
    assert store.get(KEY) == b"payload"


def test_a_put_whose_flush_fails_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path)

    def failing_fsync(descriptor: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        store.put(KEY, b"payload")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
