"""Encryption at rest: sealed blobs and prompts, content ids bound, key rotation, crypto-shredding."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import grpc
import pytest

from control_plane import crypto
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.api_keys import ensure_operator_key
from control_plane.crypto import DecryptionError
from control_plane.db.pool import Pool
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._privacy import generate, new_item
from tests.integration.control_plane._support import Caller, png_bytes


def _blob_path(blob_dir: Path, pool: Pool, content_id: str) -> Path:
    with pool.connection() as conn:
        (key,) = conn.execute("SELECT blob_key FROM content WHERE content_id = %s", (content_id,)).fetchone()
    from control_plane.adapters.blobstore import LocalBlobStore

    return LocalBlobStore(blob_dir).path_for(key)


def _live_data_keys(pool: Pool, master: crypto.MasterKey) -> list[bytes]:
    """Every data key an attacker holding the database and the master key could unwrap."""
    with pool.connection() as conn:
        rows = conn.execute("SELECT account_id, wrapped_dek FROM account_keys WHERE wrapped_dek IS NOT NULL").fetchall()
    return [crypto.unwrap_data_key(master, account_id, bytes(wrapped)) for account_id, wrapped in rows]


def _decrypts_with_any(sealed: bytes, content_id: str, data_keys: list[bytes]) -> bytes | None:
    for key in data_keys:
        try:
            return crypto.open_sealed(key, sealed, crypto.blob_context(UUID(content_id)))
        except DecryptionError:
            continue
    return None


class TestSealedAtRest:
    def test_blob_files_and_prompt_column_hold_no_plaintext_but_reads_return_it(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], blob_dir: Path, pool: Pool
    ) -> None:
        account_id = make_account(credits=5)
        stored = generate(stub, operator, account_id, new_item(1, prompt="a secret garden"))
        (item,) = stored.contents
        assert item.prompt == "a secret garden"
        on_disk = _blob_path(blob_dir, pool, item.content_id).read_bytes()
        assert not on_disk.startswith(b"\x89PNG") and png_bytes(1) not in on_disk
        with pool.connection() as conn:
            prompt, sealed, key_id = conn.execute(
                "SELECT prompt, prompt_sealed, encryption_key_id FROM content WHERE content_id = %s",
                (item.content_id,),
            ).fetchone()
        assert prompt == "" and b"secret garden" not in bytes(sealed) and key_id is not None
        read = stub.GetContent(
            pb.GetContentRequest(content_id=item.content_id, include_data=True), metadata=operator.metadata
        )
        assert read.data == png_bytes(1)
        assert read.content.prompt == "a secret garden"

    def test_a_blob_copied_over_another_items_blob_does_not_decrypt(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], blob_dir: Path, pool: Pool
    ) -> None:
        account_id = make_account(credits=5)
        first, second = generate(stub, operator, account_id, new_item(1), new_item(2)).contents
        shutil.copyfile(_blob_path(blob_dir, pool, first.content_id), _blob_path(blob_dir, pool, second.content_id))
        with pytest.raises(grpc.RpcError) as error:
            stub.GetContent(
                pb.GetContentRequest(content_id=second.content_id, include_data=True), metadata=operator.metadata
            )
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert "internal error (request id" in error.value.details()

    def test_each_account_gets_its_own_data_key_wrapped_with_the_master_key_id(
        self,
        stub: ControlPlaneStub,
        operator: Caller,
        make_account: Callable[..., str],
        pool: Pool,
        keys: PostgresKeyStore,
    ) -> None:
        accounts = [make_account(credits=5) for _ in range(2)]
        for account_id in accounts:
            generate(stub, operator, account_id, new_item(1))
        with pool.connection() as conn:
            rows = conn.execute("SELECT account_id, master_key_id FROM account_keys ORDER BY account_id").fetchall()
        assert sorted(str(r[0]) for r in rows) == sorted(accounts)
        assert {r[1] for r in rows} == {keys.master_key_id}


class TestCryptoShredding:
    def test_a_backup_copy_of_an_erased_accounts_blobs_can_no_longer_be_decrypted(
        self,
        stub: ControlPlaneStub,
        operator: Caller,
        make_account: Callable[..., str],
        blob_dir: Path,
        pool: Pool,
        master_key_file: Path,
        tmp_path: Path,
    ) -> None:
        victim = make_account(credits=5)
        bystander = make_account(credits=5)
        items = generate(stub, operator, victim, new_item(1), new_item(2)).contents
        generate(stub, operator, bystander, new_item(3))
        backup = {c.content_id: _blob_path(blob_dir, pool, c.content_id).read_bytes() for c in items}
        master = crypto.read_master_key_file(master_key_file)
        # The method works: before erasure, someone with the database and master key reads the backup.
        assert all(
            _decrypts_with_any(sealed, cid, _live_data_keys(pool, master)) is not None for cid, sealed in backup.items()
        )

        stub.RequestErasure(pb.RequestErasureRequest(account_id=victim), metadata=operator.metadata)

        with pool.connection() as conn:
            ((wrapped, destroyed_at),) = conn.execute(
                "SELECT wrapped_dek, destroyed_at FROM account_keys WHERE account_id = %s", (victim,)
            ).fetchall()
        assert wrapped is None and destroyed_at is not None
        remaining = _live_data_keys(pool, crypto.read_master_key_file(master_key_file))
        assert len(remaining) == 1  # the bystander's
        assert all(_decrypts_with_any(sealed, cid, remaining) is None for cid, sealed in backup.items())
        assert [p for p in blob_dir.rglob("*") if p.is_file()].__len__() == 1  # only the bystander's blob


class TestMasterKeyRotation:
    def test_rotation_rewraps_every_data_key_and_leaves_content_untouched(
        self,
        stub: ControlPlaneStub,
        operator: Caller,
        make_account: Callable[..., str],
        blob_dir: Path,
        pool: Pool,
        master_key_file: Path,
    ) -> None:
        accounts = [make_account(credits=5) for _ in range(3)]
        stored = [generate(stub, operator, a, new_item(i)).contents[0] for i, a in enumerate(accounts)]
        files_before = {p: p.read_bytes() for p in blob_dir.rglob("*") if p.is_file()}
        old_id = crypto.read_master_key_file(master_key_file).key_id

        response = stub.RotateMasterKey(pb.RotateMasterKeyRequest(), metadata=operator.metadata)

        assert response.previous_key_id == old_id and response.key_id != old_id
        assert response.rewrapped_keys == 3
        assert crypto.read_master_key_file(master_key_file).key_id == response.key_id
        assert oct(master_key_file.stat().st_mode & 0o777) == "0o600"
        with pool.connection() as conn:
            ids = {r[0] for r in conn.execute("SELECT master_key_id FROM account_keys").fetchall()}
        assert ids == {response.key_id}
        assert {p: p.read_bytes() for p in blob_dir.rglob("*") if p.is_file()} == files_before
        for item, seed in zip(stored, range(3), strict=True):
            read = stub.GetContent(
                pb.GetContentRequest(content_id=item.content_id, include_data=True), metadata=operator.metadata
            )
            assert read.data == png_bytes(seed)

    def test_rotation_needs_the_admin_scope(self, stub: ControlPlaneStub, make_key: Callable[..., str]) -> None:
        secret = make_key(pb.SCOPE_PRIVACY)
        with pytest.raises(grpc.RpcError) as error:
            stub.RotateMasterKey(pb.RotateMasterKeyRequest(), metadata=(("authorization", f"Bearer {secret}"),))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED

    def test_only_the_operators_tenant_may_rotate(
        self, stub: ControlPlaneStub, operator: Caller, pool: Pool, master_key_file: Path
    ) -> None:
        # Every tenant's data keys are re-wrapped: another tenant's admin must not trigger that.
        principal, secret = ensure_operator_key(pool, "another tenant")
        assert secret is not None and principal.tenant_id != operator.principal.tenant_id
        before = master_key_file.read_bytes()
        with pytest.raises(grpc.RpcError) as error:
            stub.RotateMasterKey(pb.RotateMasterKeyRequest(), metadata=(("authorization", f"Bearer {secret}"),))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "operator" in (error.value.details() or "")
        assert master_key_file.read_bytes() == before


class TestConcurrentStores:
    def test_concurrent_stores_for_one_account_all_succeed(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        # The store locks the account row against a racing erasure; two stores must not
        # deadlock on it (a shared lock upgraded by both did).
        from concurrent.futures import ThreadPoolExecutor

        account_id = make_account(credits=50)
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda seed: generate(stub, operator, account_id, new_item(seed)), range(16)))
        assert len({r.contents[0].content_id for r in results}) == 16
        listed = stub.ListContent(
            pb.ListContentRequest(account_id=account_id, page_size=100), metadata=operator.metadata
        )
        assert len(listed.contents) == 16
