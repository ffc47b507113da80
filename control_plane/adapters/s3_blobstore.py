"""Blobs as objects in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, R2, ...), through obstore.

The store is named by a URL, `s3://bucket/prefix`; blob keys become object names under the
prefix (`prefix/<account_id>/<content_id>`). Credentials, region and endpoint come from the
standard AWS settings, which obstore reads from the environment when the store is built:
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), `AWS_REGION`,
`AWS_ENDPOINT_URL` (for a server other than AWS) and `AWS_ALLOW_HTTP=true` (a plain-http
endpoint, for tests), plus the rest of AWS's chain (web identity tokens, container and
instance credentials). `overrides` wins over the environment (tests, benchmarks).

What reaches the bucket is already sealed by `EncryptedBlobStore`; this store never sees
plaintext. A PUT is atomic in S3: readers see the old object or the whole new one. An
outage (server down, timeouts, refused credentials) is `BlobStoreUnavailable` after a few
quick retries, which the server answers with UNAVAILABLE and a retry hint, never INTERNAL.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError as ObjectStoreError
from obstore.store import S3Store

from control_plane.adapters.blobstore import BlobNotFoundError, validate_blob_key
from control_plane.errors import BlobStoreUnavailable

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BULK_DELETE_MAX = 1000
"""Keys per DeleteObjects request (S3's limit); obstore splits longer lists itself."""
RETRY: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=15)}
"""A few quick retries: a caller is waiting, and an RPC is better answered UNAVAILABLE soon."""
CONNECT_TIMEOUT = "5s"
REQUEST_TIMEOUT = "60s"


def parse_s3_url(url: str) -> tuple[str, str]:
    """Splits `s3://bucket/prefix` into the bucket and the prefix ("" for none).

    Raises:
        ValueError: Not an s3:// URL, a bucket name S3 refuses, a query or fragment, or a
            prefix segment outside `[A-Za-z0-9._-]` (starting with a letter or digit).
    """
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"{url!r} is not an s3:// URL; use s3://bucket/prefix")
    if not _BUCKET.match(parts.netloc) or ".." in parts.netloc:
        raise ValueError(f"{url!r} names no valid bucket: use 3..63 of [a-z0-9.-], e.g. s3://atelier-content/prod")
    if parts.query or parts.fragment or parts.username or parts.password or parts.port:
        raise ValueError(f"{url!r}: use s3://bucket/prefix without credentials, port, query or fragment")
    prefix = parts.path.strip("/")
    if prefix and not all(_PREFIX_SEGMENT.match(segment) for segment in prefix.split("/")):
        raise ValueError(f"{url!r}: each prefix segment must be [A-Za-z0-9._-] starting with a letter or digit")
    return parts.netloc, prefix


def open_s3_store(
    url: str, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ
) -> S3Store:
    """An obstore `S3Store` on `s3://bucket/prefix`, configured from the AWS environment and `overrides`.

    Args:
        url: `s3://bucket/prefix`.
        overrides: obstore `S3Config` keys (`endpoint`, `access_key_id`, `secret_access_key`,
            `region`, ...) and `allow_http`, winning over the environment.
        environ: Where `AWS_ALLOW_HTTP` is read (obstore reads the other `AWS_*` variables
            from the process environment itself).

    Raises:
        ValueError: The URL is malformed (see `parse_s3_url`) or a setting is unknown.
    """
    bucket, prefix = parse_s3_url(url)
    settings = dict(overrides or {})
    # Client options given here replace those obstore would read from the environment, so
    # the one of them that is an AWS setting, AWS_ALLOW_HTTP, is read here.
    allow_http = settings.pop("allow_http", None)
    if allow_http is None:
        allow_http = environ.get("AWS_ALLOW_HTTP", "").strip().lower() in ("true", "1", "yes")
    client: ClientConfig = {
        "connect_timeout": CONNECT_TIMEOUT,
        "timeout": REQUEST_TIMEOUT,
        "allow_http": bool(allow_http),
    }
    try:
        return S3Store(
            bucket,
            prefix=prefix or None,
            client_options=client,
            retry_config=RETRY,
            **settings,
        )
    except ObjectStoreError as error:
        raise ValueError(f"cannot configure the object store for {url}: {error}") from None


def call_object_store(operation: str, call: Callable[[], _T]) -> _T:
    """Runs one object-store call, turning an outage into `BlobStoreUnavailable`.

    A missing object is left to the caller (`FileNotFoundError`): only it knows whether that
    is an error.
    """
    try:
        return call()
    except FileNotFoundError:
        raise
    except (ObjectStoreError, OSError) as error:
        # The first line only: obstore appends a multi-line debug dump.
        _logger.warning("object store %s failed: %s", operation, str(error).splitlines()[0] if str(error) else error)
        raise BlobStoreUnavailable(
            f"the blob store cannot be reached ({operation} failed); nothing was changed by this call: "
            "retry with backoff"
        ) from error


def list_object_names(store: S3Store, prefix: str = "") -> list[str]:
    """Every object name under `prefix` (relative to the store's own prefix).

    Raises:
        BlobStoreUnavailable: The bucket could not be reached.
    """
    pages = call_object_store("list", lambda: list(obstore.list(store, prefix or None)))
    return [meta["path"] for page in pages for meta in page]


class S3BlobStore:
    """`BlobStore` on an S3-compatible bucket. Thread-safe (one HTTP client pool per store)."""

    def __init__(self, url: str, overrides: Mapping[str, Any] | None = None) -> None:
        """Uses the bucket and prefix of `url` (`s3://bucket/prefix`); see `open_s3_store`."""
        self.url = url
        self.store = open_s3_store(url, overrides)

    def put(self, key: str, data: bytes) -> None:
        """See `BlobStore.put`.

        Raises:
            BlobStoreUnavailable: The bucket could not be reached; nothing was stored.
        """
        validate_blob_key(key)
        call_object_store("put", lambda: obstore.put(self.store, key, data))

    def get(self, key: str) -> bytes:
        """See `BlobStore.get`.

        Raises:
            BlobStoreUnavailable: The bucket could not be reached.
        """
        validate_blob_key(key)
        try:
            return call_object_store("get", lambda: obstore.get(self.store, key).bytes().to_bytes())
        except FileNotFoundError:
            raise BlobNotFoundError(key) from None

    def delete(self, key: str) -> None:
        """See `BlobStore.delete`."""
        validate_blob_key(key)
        call_object_store("delete", lambda: obstore.delete(self.store, key))

    def delete_many(self, keys: Sequence[str]) -> None:
        """See `BlobStore.delete_many`: DeleteObjects requests of up to 1000 keys."""
        for key in keys:
            validate_blob_key(key)
        for start in range(0, len(keys), _BULK_DELETE_MAX):
            batch = list(keys[start : start + _BULK_DELETE_MAX])
            call_object_store("delete", partial(obstore.delete, self.store, batch))

    def exists(self, key: str) -> bool:
        """See `BlobStore.exists`."""
        validate_blob_key(key)
        try:
            call_object_store("head", lambda: obstore.head(self.store, key))
        except FileNotFoundError:
            return False
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (for tests, backups and clean-up), in no particular order."""
        return list_object_names(self.store, prefix)
