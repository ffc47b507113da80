"""Per-account data keys in `account_keys`, wrapped by the master key.

An account's data key is created on its first store, kept only wrapped (with the id of the
master key that wrapped it), and destroyed by an erasure: the wrapped key is overwritten
with NULL, so the account's ciphertexts (blobs, prompts, export archives, and any copies
of them in backups) can no longer be decrypted by anyone.

`atelier keys rotate-master` re-wraps every live data key under a new master key in one
transaction; content is not touched. The new key is written beside the key file first
(`<file>.next`) and moved over it after the commit, and a store that meets a data key
wrapped by a master key it does not hold re-reads both files, so a crash between commit and
rename, or a rotation done by another control-plane process, loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol
from uuid import UUID

from control_plane import crypto
from control_plane.audit import Actor, record_audit
from control_plane.crypto import MasterKey, MasterKeyError
from control_plane.db.pool import Connection
from control_plane.errors import FailedPrecondition

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataKey:
    """An unwrapped data key; never logged, never stored unwrapped."""

    key_id: UUID
    account_id: UUID
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class RotationResult:
    """What `rotate_master` did."""

    previous_key_id: str
    key_id: str
    rewrapped_keys: int


class DataKeyDestroyed(FailedPrecondition):
    """The data key was destroyed by an erasure: what it encrypted is gone for good."""

    reason = "DATA_KEY_DESTROYED"


LIVE_KEY_COLUMNS = "key_id, master_key_id, wrapped_dek"
"""The `account_keys` columns `KeyStore.unwrap_live` takes, in its order: for a caller that
reads an account's live key (`destroyed_at IS NULL`, at most one) with its other rows, saving
`live_data_key`'s round trip."""


class KeyStore(Protocol):
    """Where data keys come from; PostgreSQL in production, the same table in tests."""

    @property
    def master_key_id(self) -> str:
        """Id of the master key new data keys are wrapped with."""
        ...

    def watermark_key(self) -> bytes:
        """The key watermark payloads are derived with (from the current master key)."""
        ...

    def live_data_key(self, conn: Connection, account_id: UUID, *, actor: Actor, now: datetime) -> DataKey:
        """The account's live data key, created (and committed, with its audit row) if it has none."""
        ...

    def unwrap_live(self, account_id: UUID, row: tuple[UUID, str, bytes]) -> DataKey:
        """The data key of a live `account_keys` row the caller read (LIVE_KEY_COLUMNS)."""
        ...

    def data_key(self, conn: Connection, key_id: UUID) -> DataKey:
        """A data key by id; raises DataKeyDestroyed when it was destroyed."""
        ...

    def content_data_keys(self, conn: Connection) -> dict[UUID, DataKey]:
        """Every live data key that encrypts some content, by key id, read in one query (bulk readers)."""
        ...

    def destroy_account_keys(self, conn: Connection, account_id: UUID, now: datetime) -> int:
        """Destroys the account's keys inside the caller's transaction; returns how many."""
        ...

    def rotate_master(self, conn: Connection, *, actor: Actor, now: datetime) -> RotationResult:
        """Re-wraps every live data key under a new master key."""
        ...


class PostgresKeyStore:
    """`KeyStore` on the `account_keys` table. Thread-safe."""

    def __init__(self, master: MasterKey, key_file: Path | None = None) -> None:
        """Wraps new keys with `master`.

        Args:
            master: The current master key.
            key_file: The file `master` was read from; None when it came from the environment,
                which makes `rotate_master` refuse (there is nowhere to put the new key).
        """
        self._lock = threading.Lock()
        self._current = master
        self._ring: dict[str, MasterKey] = {master.key_id: master}
        self._key_file = key_file

    @property
    def master_key_id(self) -> str:
        """See `KeyStore.master_key_id`."""
        with self._lock:
            return self._current.key_id

    def watermark_key(self) -> bytes:
        """See `KeyStore.watermark_key`."""
        return crypto.watermark_key(self._current_master())

    def live_data_key(self, conn: Connection, account_id: UUID, *, actor: Actor, now: datetime) -> DataKey:
        """See `KeyStore.live_data_key`. Concurrent first stores end up with one key."""
        row = self._select_live(conn, account_id)
        if row is None:
            master = self._current_master()
            with conn.transaction():
                created = conn.execute(
                    """
                    INSERT INTO account_keys (account_id, master_key_id, wrapped_dek, created_at)
                    VALUES (%s, %s, %s, %s)
                    ON CONFLICT (account_id) WHERE destroyed_at IS NULL DO NOTHING
                    RETURNING key_id
                    """,
                    (account_id, master.key_id, crypto.wrap_data_key(master, account_id, crypto.new_data_key()), now),
                ).fetchone()
                if created is not None:
                    details = {"account_id": str(account_id), "master_key_id": master.key_id}
                    record_audit(conn, actor, now, "account_key.create", "account_key", created[0], details)
            row = self._select_live(conn, account_id)
            if row is None:
                raise DataKeyDestroyed(f"account {account_id} has no live data key")
        return self.unwrap_live(account_id, row)

    def unwrap_live(self, account_id: UUID, row: tuple[UUID, str, bytes]) -> DataKey:
        """See `KeyStore.unwrap_live`."""
        key_id, master_key_id, wrapped = row
        return DataKey(key_id, account_id, self._unwrap(master_key_id, account_id, bytes(wrapped)))

    def data_key(self, conn: Connection, key_id: UUID) -> DataKey:
        """See `KeyStore.data_key`."""
        row = conn.execute(
            "SELECT account_id, master_key_id, wrapped_dek FROM account_keys WHERE key_id = %s", (key_id,)
        ).fetchone()
        if row is None or row[2] is None:
            raise DataKeyDestroyed("the content's data key was destroyed by an erasure; it cannot be read")
        account_id, master_key_id, wrapped = row
        return DataKey(key_id, account_id, self._unwrap(master_key_id, account_id, bytes(wrapped)))

    def content_data_keys(self, conn: Connection) -> dict[UUID, DataKey]:
        """See `KeyStore.content_data_keys`."""
        rows = conn.execute(
            """
            SELECT key_id, account_id, master_key_id, wrapped_dek FROM account_keys
            WHERE wrapped_dek IS NOT NULL
              AND key_id IN (SELECT encryption_key_id FROM content WHERE encryption_key_id IS NOT NULL)
            """
        ).fetchall()
        return {
            key_id: DataKey(key_id, account_id, self._unwrap(master_key_id, account_id, bytes(wrapped)))
            for key_id, account_id, master_key_id, wrapped in rows
        }

    def destroy_account_keys(self, conn: Connection, account_id: UUID, now: datetime) -> int:
        """See `KeyStore.destroy_account_keys`."""
        destroyed = conn.execute(
            """
            UPDATE account_keys SET wrapped_dek = NULL, destroyed_at = %s
            WHERE account_id = %s AND destroyed_at IS NULL
            """,
            (now, account_id),
        ).rowcount
        return max(destroyed, 0)

    def rotate_master(self, conn: Connection, *, actor: Actor, now: datetime) -> RotationResult:
        """See `KeyStore.rotate_master`.

        Raises:
            FailedPrecondition: The master key came from the environment (reason
                MASTER_KEY_NOT_ROTATABLE): set ATELIER_MASTER_KEY_FILE to rotate.
        """
        if self._key_file is None:
            raise FailedPrecondition(
                "the master key comes from ATELIER_MASTER_KEY; rotation needs a key file (set ATELIER_MASTER_KEY_FILE)",
                reason="MASTER_KEY_NOT_ROTATABLE",
            )
        previous = self._current_master()
        new = MasterKey.generate()
        pending = _pending_path(self._key_file)
        crypto.write_master_key_file(pending, new)
        with conn.transaction():
            rows = conn.execute(
                """
                SELECT key_id, account_id, master_key_id, wrapped_dek FROM account_keys
                WHERE destroyed_at IS NULL ORDER BY key_id FOR UPDATE
                """
            ).fetchall()
            updates = [
                (
                    new.key_id,
                    crypto.wrap_data_key(new, account_id, self._unwrap(mk_id, account_id, bytes(wrapped))),
                    key_id,
                )
                for key_id, account_id, mk_id, wrapped in rows
            ]
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE account_keys SET master_key_id = %s, wrapped_dek = %s WHERE key_id = %s", updates
                )
            details = {"previous_key_id": previous.key_id, "key_id": new.key_id, "rewrapped_keys": len(updates)}
            record_audit(conn, actor, now, "master_key.rotate", "master_key", new.key_id, details)
        os.replace(pending, self._key_file)
        with self._lock:
            self._current = new
            self._ring = {new.key_id: new}
        _logger.info(
            "master key rotated previous_key_id=%s key_id=%s rewrapped=%d", previous.key_id, new.key_id, len(updates)
        )
        return RotationResult(previous.key_id, new.key_id, len(updates))

    def _select_live(self, conn: Connection, account_id: UUID) -> tuple[UUID, str, bytes] | None:
        row = conn.execute(
            """
            SELECT key_id, master_key_id, wrapped_dek FROM account_keys
            WHERE account_id = %s AND destroyed_at IS NULL
            """,
            (account_id,),
        ).fetchone()
        return (row[0], row[1], bytes(row[2])) if row is not None else None

    def _current_master(self) -> MasterKey:
        with self._lock:
            return self._current

    def _unwrap(self, master_key_id: str, account_id: UUID, wrapped: bytes) -> bytes:
        master = self._master(master_key_id)
        return crypto.unwrap_data_key(master, account_id, wrapped)

    def _master(self, master_key_id: str) -> MasterKey:
        with self._lock:
            master = self._ring.get(master_key_id)
        if master is not None:
            return master
        # Another process rotated (or this one crashed between commit and rename): re-read.
        for path in (self._key_file, _pending_path(self._key_file) if self._key_file else None):
            if path is None:
                continue
            with contextlib.suppress(MasterKeyError):
                candidate = crypto.read_master_key_file(path)
                if candidate.key_id == master_key_id:
                    with self._lock:
                        self._ring[candidate.key_id] = candidate
                        if path == self._key_file:
                            self._current = candidate
                    return candidate
        raise MasterKeyError(
            f"no master key with id {master_key_id} is loaded; the data key was wrapped by another master key"
        )


def _pending_path(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + ".next")
