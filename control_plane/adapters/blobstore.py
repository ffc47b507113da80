"""Blob stores: where content bytes live, behind one small interface.

`LocalBlobStore` keeps blobs in a directory and `S3BlobStore` (`s3_blobstore.py`) in an
S3-compatible bucket; both implement the `BlobStore` protocol, and `EncryptedBlobStore`
seals what reaches either, so content code does not depend on where bytes live. Keys read
`<account_id>/<content_id>`, so a wrapper can tell whose key to use from the key alone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from control_plane.adapters.atomic_files import write_atomically_one_sync
from control_plane.errors import StorageFull

_KEY_FORMAT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
MAX_KEY_CHARS = 512
# Out of space, out of quota, or over RLIMIT_FSIZE (with SIGXFSZ ignored): the store is full
# for this blob, whatever the caller sends.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class BlobNotFoundError(LookupError):
    """No blob is stored under the key."""


class BlobStore(Protocol):
    """Stores immutable byte strings under string keys.

    Keys are 1..512 characters of `[A-Za-z0-9._-]` in `/`-separated segments, each segment
    starting with a letter or digit (so no `..`, no absolute paths).
    """

    def put(self, key: str, data: bytes) -> None:
        """Stores `data` under `key`, replacing any blob there. Readers see the old blob
        or the whole new one, never a part.

        Raises:
            StorageFull: There is no space for it; nothing of it is left behind.
        """
        ...

    def get(self, key: str) -> bytes:
        """Returns the blob under `key`; raises BlobNotFoundError when there is none."""
        ...

    def delete(self, key: str) -> None:
        """Removes the blob under `key`; does nothing when there is none."""
        ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """Removes the blobs under `keys`, skipping missing ones; an object store batches
        them into few requests. Raises the first error; the others may be gone already."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        ...


def validate_blob_key(key: str) -> str:
    """Returns `key` when it is a valid blob key.

    Raises:
        ValueError: The key is empty, too long, absolute, or has an invalid segment.
    """
    if not 1 <= len(key) <= MAX_KEY_CHARS or _KEY_FORMAT.match(key) is None:
        raise ValueError(
            f"invalid blob key {key[:80]!r}: use 1..{MAX_KEY_CHARS} characters of [A-Za-z0-9._-] "
            "in /-separated segments that start with a letter or digit"
        )
    return key


class LocalBlobStore:
    """Blobs as files under one root directory.

    Files are sharded by a hash of the key into `root/ab/cd/`, so no directory grows past a
    few thousand entries. Writes go to a temporary file in the target directory, are renamed
    over the target (`os.replace`, atomic on POSIX) and fsynced once
    (`write_atomically_one_sync`): after `put` returns the blob survives a crash on Linux's
    journaling file systems, and a reader never sees a half-written file. When the disk is
    full the temporary file is removed and `put` raises `StorageFull`, so a failed write
    leaves nothing and the caller gets a clear error.
    """

    def __init__(self, root: Path) -> None:
        """Uses (and creates) `root`."""
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._root_text = os.fspath(root)

    def path_for(self, key: str) -> Path:
        """The file that holds `key`'s blob (whether or not it exists)."""
        return Path(self._file_for(key))

    def _file_for(self, key: str) -> str:
        # Plain strings, not pathlib: the sweeper resolves a path per deleted item, and three
        # Path joins and quote() cost as much as the unlink itself. A valid key's only
        # character quote(key, safe="") changes is "/" (to "%2F"), so the name is the same.
        digest = hashlib.sha256(validate_blob_key(key).encode()).hexdigest()
        return os.path.join(self._root_text, digest[:2], digest[2:4], key.replace("/", "%2F"))

    def put(self, key: str, data: bytes) -> None:
        """See `BlobStore.put`."""
        path = self.path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically_one_sync(path, data)
        except OSError as error:
            if error.errno not in _FULL_ERRNOS:
                raise
            raise StorageFull(
                f"the blob store is full ({os.strerror(error.errno)}): nothing was stored; "
                "retry once an operator has freed space in the blob store"
            ) from error

    def get(self, key: str) -> bytes:
        """See `BlobStore.get`."""
        try:
            return self.path_for(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(key) from None

    def delete(self, key: str) -> None:
        """See `BlobStore.delete`."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file_for(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        """See `BlobStore.delete_many`: one unlink per key (a file system has no batch)."""
        for key in keys:
            self.delete(key)

    def exists(self, key: str) -> bool:
        """See `BlobStore.exists`."""
        return os.path.isfile(self._file_for(key))
