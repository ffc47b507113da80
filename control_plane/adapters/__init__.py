"""What the control plane keeps outside PostgreSQL, behind small interfaces.

- `blobstore`: the `BlobStore` protocol and `LocalBlobStore` (a directory).
- `encrypted_blobs`: `EncryptedBlobStore`, sealing every blob with its account's data key before
  any store sees it.
- `keystore`: the `KeyStore` protocol and `PostgresKeyStore` (data keys wrapped by the master key).
- `atomic_files`: durable, all-or-nothing file writes.
"""
