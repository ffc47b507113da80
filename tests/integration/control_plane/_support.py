"""Helpers the control-plane integration tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import control_plane
from control_plane import accounts, registration
from control_plane.adapters.blobstore import BlobStore, LocalBlobStore
from control_plane.adapters.s3_blobstore import S3BlobStore
from control_plane.api_keys import Principal
from control_plane.audit import SYSTEM
from control_plane.db.pool import Connection
from control_plane.tenants import ensure_tenant

REPO_ROOT = Path(control_plane.__file__).resolve().parent.parent
"""The checkout, as the working directory of `python -m control_plane` subprocesses."""

# A fixed, recent instant: tests that depend on "now" (ages, expiry) move the clock from here.
CLOCK_START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Caller:
    """An API key and the metadata that presents it."""

    principal: Principal
    secret: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """`authorization: Bearer <secret>`."""
        return (("authorization", f"Bearer {self.secret}"),)


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    """Call metadata presenting `secret`."""
    return (("authorization", f"Bearer {secret}"),)


def png_bytes(seed: int = 0, size: int = 2) -> bytes:
    """A valid `size`x`size` RGB PNG whose colour depends on `seed`."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    colour = bytes(((seed * 37) % 256, (seed * 91) % 256, (seed * 173) % 256))
    raw = b"".join(b"\x00" + colour * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def error_reason(error: grpc.RpcError) -> str | None:
    """The `google.rpc.ErrorInfo` reason in an error's rich status details, if any."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return None


def adult_account(conn: Connection, *, tenant_name: str, credits: int) -> tuple[UUID, UUID]:
    """(tenant id, account id) of a new adult free-tier account with `credits`, made directly in the
    database at `CLOCK_START` (for tests of the credit arithmetic below the gRPC layer)."""
    tenant, _ = ensure_tenant(conn, name=tenant_name, actor=SYSTEM, now=CLOCK_START)
    account, _ = registration.register_account(
        conn,
        tenant_id=tenant.tenant_id,
        evidence=accounts.AgeEvidence(age_attested=30),
        minimum_age=13,
        default_visibility=accounts.Visibility.PRIVATE,
        initial_credits=credits,
        actor=SYSTEM,
        now=CLOCK_START,
    )
    return tenant.tenant_id, account.account_id


StoredBlobs = Callable[[], dict[str, bytes]]
"""The `stored_blobs` fixture: every blob of the store in use, key to raw (sealed) bytes."""


class SwitchedBlobStore:
    """The session server's blob store: the local directory, or the S3 bucket when a test runs
    with `blob_backend` "s3". Every call goes to the store in use, so one server runs the same
    tests against both."""

    def __init__(self, local: LocalBlobStore) -> None:
        self.local = local
        self.current: BlobStore = local

    def use(self, store: BlobStore) -> None:
        """Sends every later call to `store`."""
        self.current = store

    def put(self, key: str, data: bytes) -> None:
        self.current.put(key, data)

    def get(self, key: str) -> bytes:
        return self.current.get(key)

    def delete(self, key: str) -> None:
        self.current.delete(key)

    def delete_many(self, keys: Sequence[str]) -> None:
        self.current.delete_many(keys)

    def exists(self, key: str) -> bool:
        return self.current.exists(key)

    def raw_blobs(self) -> dict[str, bytes]:
        """Every stored blob's key and bytes as they lie in the store in use (ciphertext)."""
        if isinstance(self.current, S3BlobStore):
            return {key: self.current.get(key) for key in self.current.list_keys()}
        return {
            path.name.replace("%2F", "/"): path.read_bytes()
            for path in self.local.root.rglob("*")
            if path.is_file() and not path.name.startswith(".tmp-")
        }
