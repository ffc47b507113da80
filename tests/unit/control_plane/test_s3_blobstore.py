"""The S3 blob store without a server: URL parsing, key checks, and an unreachable endpoint."""

from __future__ import annotations

import time

import pytest

from control_plane.adapters.s3_blobstore import S3BlobStore, parse_s3_url
from control_plane.errors import BlobStoreUnavailable, Unavailable

# Nothing listens on port 1 of the loopback: every request is refused at once.
UNREACHABLE = {
    "endpoint": "http://127.0.0.1:1",
    "access_key_id": "key",
    "secret_access_key": "secret",
    "region": "us-east-1",
    "allow_http": True,
}


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("s3://atelier-content", ("atelier-content", "")),
        ("s3://atelier-content/", ("atelier-content", "")),
        ("s3://atelier.content/prod/blobs/", ("atelier.content", "prod/blobs")),
    ],
)
def test_an_s3_url_names_the_bucket_and_the_prefix(url: str, parsed: tuple[str, str]) -> None:
    assert parse_s3_url(url) == parsed


@pytest.mark.parametrize(
    "url",
    [
        "https://atelier-content/x",
        "s3://",
        "s3://Upper/x",
        "s3://ab/x",
        "s3://bucket/x?versionId=1",
        "s3://key:secret@bucket/x",
        "s3://bucket/../x",
        "s3://bucket/a//b",
    ],
)
def test_a_malformed_s3_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_url(url)


def test_an_invalid_key_is_refused_before_any_request() -> None:
    store = S3BlobStore("s3://atelier-content/x", UNREACHABLE)
    with pytest.raises(ValueError, match="invalid blob key"):
        store.put("../escape", b"x")


@pytest.mark.parametrize("operation", ["put", "get", "delete_many", "exists"])
def test_an_unreachable_endpoint_is_unavailable_with_a_retry_hint_and_soon(operation: str) -> None:
    store = S3BlobStore("s3://atelier-content/x", UNREACHABLE)
    calls = {
        "put": lambda: store.put("a/b", b"sealed"),
        "get": lambda: store.get("a/b"),
        "delete_many": lambda: store.delete_many(["a/b", "a/c"]),
        "exists": lambda: store.exists("a/b"),
    }
    started = time.monotonic()
    with pytest.raises(BlobStoreUnavailable) as caught:
        calls[operation]()
    assert isinstance(caught.value, Unavailable) and caught.value.reason == "BLOB_STORE_UNAVAILABLE"
    assert "retry" in caught.value.message
    assert time.monotonic() - started < 15
