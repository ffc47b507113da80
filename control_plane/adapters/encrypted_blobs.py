"""An encrypting wrapper around any `BlobStore`: what reaches the store is AES-256-GCM.

Each blob is sealed with its account's data key and the content id as associated data
(`crypto.blob_context`), so a blob copied over another item's key fails to decrypt instead
of showing the wrong image. The wrapped store never sees plaintext or keys.
"""

from __future__ import annotations

from collections.abc import Sequence

from control_plane import crypto
from control_plane.adapters.blobstore import BlobStore
from control_plane.adapters.keystore import DataKey


class EncryptedBlobStore:
    """Seals on `put`, opens on `get`; `delete`, `delete_many` and `exists` pass through."""

    def __init__(self, inner: BlobStore) -> None:
        """Stores ciphertexts in `inner`."""
        self._inner = inner

    @property
    def inner(self) -> BlobStore:
        """The store holding the ciphertexts (for benchmarks and backups)."""
        return self._inner

    def put(self, key: str, data: bytes, *, data_key: DataKey, context: bytes) -> None:
        """Seals `data` with `data_key`, binding `context`, and stores it under `key`."""
        self._inner.put(key, crypto.seal(data_key.key, data, context))

    def get(self, key: str, *, data_key: DataKey, context: bytes) -> bytes:
        """Returns the plaintext under `key`.

        Raises:
            BlobNotFoundError: Nothing is stored under `key`.
            DecryptionError: The blob was sealed with another key or context, or changed.
        """
        return crypto.open_sealed(data_key.key, self._inner.get(key), context)

    def delete(self, key: str) -> None:
        """See `BlobStore.delete`."""
        self._inner.delete(key)

    def delete_many(self, keys: Sequence[str]) -> None:
        """See `BlobStore.delete_many`."""
        self._inner.delete_many(keys)

    def exists(self, key: str) -> bool:
        """See `BlobStore.exists`."""
        return self._inner.exists(key)
