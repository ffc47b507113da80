"""The encrypting blob-store wrapper over an in-memory store implementing the same port."""

from __future__ import annotations

from uuid import uuid4

import pytest

from control_plane import crypto
from control_plane.adapters.blobstore import BlobNotFoundError
from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.adapters.keystore import DataKey
from control_plane.crypto import DecryptionError


class InMemoryBlobStore:
    """A `BlobStore` in a dict."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        self.blobs[key] = bytes(data)

    def get(self, key: str) -> bytes:
        try:
            return self.blobs[key]
        except KeyError:
            raise BlobNotFoundError(key) from None

    def delete(self, key: str) -> None:
        self.blobs.pop(key, None)

    def exists(self, key: str) -> bool:
        return key in self.blobs


def _key() -> DataKey:
    return DataKey(uuid4(), uuid4(), crypto.new_data_key())


def test_the_inner_store_only_ever_sees_ciphertext() -> None:
    inner = InMemoryBlobStore()
    store, data_key, content_id = EncryptedBlobStore(inner), _key(), uuid4()
    store.put("a/b", b"\x89PNG secret pixels", data_key=data_key, context=crypto.blob_context(content_id))
    assert b"secret pixels" not in inner.blobs["a/b"]
    assert store.get("a/b", data_key=data_key, context=crypto.blob_context(content_id)) == b"\x89PNG secret pixels"


def test_a_blob_read_as_another_item_or_with_another_key_is_refused() -> None:
    store, data_key, content_id = EncryptedBlobStore(InMemoryBlobStore()), _key(), uuid4()
    store.put("a/b", b"pixels", data_key=data_key, context=crypto.blob_context(content_id))
    with pytest.raises(DecryptionError):
        store.get("a/b", data_key=data_key, context=crypto.blob_context(uuid4()))
    with pytest.raises(DecryptionError):
        store.get("a/b", data_key=_key(), context=crypto.blob_context(content_id))


def test_delete_and_exists_pass_through() -> None:
    store, data_key = EncryptedBlobStore(InMemoryBlobStore()), _key()
    store.put("a/b", b"pixels", data_key=data_key, context=b"c")
    assert store.exists("a/b")
    store.delete("a/b")
    assert not store.exists("a/b")
    with pytest.raises(BlobNotFoundError):
        store.get("a/b", data_key=data_key, context=b"c")
