"""Content in an S3 bucket (SeaweedFS): selected by ATELIER_BLOB_URL, sealed before upload,
erased from the bucket, shared by servers on one database, and an outage answered UNAVAILABLE."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from control_plane.adapters.s3_blobstore import S3BlobStore
from control_plane.bootstrap import bootstrap
from control_plane.config import ControlPlaneConfig
from control_plane.db.pool import Pool
from control_plane.entrypoints.server import add_listen_port, build_server
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1 import control_plane_pb2_grpc
from tests.integration._seaweedfs import SeaweedS3, seaweedfs_server
from tests.integration.control_plane._privacy import generate, new_item
from tests.integration.control_plane._support import Caller, error_reason, png_bytes
from tests.integration.control_plane.conftest import TEST_BUCKET


@contextmanager
def _server_from_env(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]
) -> Iterator[control_plane_pb2_grpc.ControlPlaneStub]:
    """A control-plane server built as `python -m control_plane` builds it, from these variables."""
    with monkeypatch.context() as patch:
        for name, value in environ.items():
            patch.setenv(name, value)
        config = ControlPlaneConfig.from_env()
        deps = bootstrap(config, migrate=False)
    server = build_server(config, deps)
    port = add_listen_port(server, "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield control_plane_pb2_grpc.ControlPlaneStub(channel)
    finally:
        server.stop(grace=None)
        deps.close()


def _environ(database_url: str, master_key_file: Path, home: Path, blob_url: str, s3: SeaweedS3) -> dict[str, str]:
    return {
        "ATELIER_DATABASE_URL": database_url,
        "ATELIER_MASTER_KEY_FILE": str(master_key_file),
        "ATELIER_HOME": str(home),
        "ATELIER_BLOB_URL": blob_url,
        "ATELIER_SWEEP_INTERVAL_S": "0",
        "ATELIER_CONTROL_PLANE_METRICS_PORT": "0",
        **s3.environ,
    }


def _files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


class TestContentInTheBucket:
    def test_content_lands_sealed_in_the_bucket_is_read_by_a_second_server_and_erasure_removes_it(
        self,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        database_url: str,
        master_key_file: Path,
        s3_server: SeaweedS3,
        operator: Caller,
        make_account,  # type: ignore[no-untyped-def]
    ) -> None:
        monkeypatch.delenv("ATELIER_BLOB_DIR", raising=False)
        blob_url = f"s3://{TEST_BUCKET}/servers-{secrets.token_hex(4)}"
        bucket = S3BlobStore(blob_url, s3_server.overrides)
        prompt = "a plaintext-canary lighthouse"
        image = png_bytes(11, size=16)
        first_home, second_home = tmp_path / "first", tmp_path / "second"
        with _server_from_env(
            monkeypatch, _environ(database_url, master_key_file, first_home, blob_url, s3_server)
        ) as first:
            account = make_account(credits=5)
            stored = generate(first, operator, account, new_item(prompt=prompt, data=image)).contents[0]

            objects = list(bucket.list_keys())
            assert objects == [f"{account}/{stored.content_id}"]
            sealed = bucket.get(objects[0])
            assert image not in sealed and image[8:40] not in sealed and prompt.encode() not in sealed
            assert _files(first_home / "blobs") == []  # nothing under the (default) blob directory

            with _server_from_env(
                monkeypatch, _environ(database_url, master_key_file, second_home, blob_url, s3_server)
            ) as second:
                read = second.GetContent(
                    pb.GetContentRequest(content_id=stored.content_id, include_data=True), metadata=operator.metadata
                )
                assert read.data == image and read.content.prompt == prompt

            first.RequestErasure(
                pb.RequestErasureRequest(account_id=account, content_id=stored.content_id), metadata=operator.metadata
            )
            assert list(bucket.list_keys()) == []


class TestOutage:
    def test_a_store_while_the_bucket_is_down_is_unavailable_and_stores_and_charges_nothing(
        self,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        database_url: str,
        master_key_file: Path,
        pool: Pool,
        operator: Caller,
        make_account,  # type: ignore[no-untyped-def]
    ) -> None:
        monkeypatch.delenv("ATELIER_BLOB_DIR", raising=False)
        # A server of its own: this test stops it.
        with seaweedfs_server() as s3:
            s3.create_bucket(TEST_BUCKET)
            environ = _environ(database_url, master_key_file, tmp_path, f"s3://{TEST_BUCKET}/outage", s3)
            with _server_from_env(monkeypatch, environ) as stub:
                account = make_account(credits=5)
                s3.stop()
                with pytest.raises(grpc.RpcError) as caught:
                    generate(stub, operator, account, new_item(1), new_item(2), cost=2)
                balance = stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=operator.metadata)

        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(caught.value) == "BLOB_STORE_UNAVAILABLE"
        assert "retry" in (caught.value.details() or "")
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM content").fetchone()[0] == 0
            held = conn.execute("SELECT state FROM reservations WHERE account_id = %s", (account,)).fetchall()
        assert [row[0] for row in held] == ["held"]  # not committed: the gateway releases it
        assert (balance.balance.total, balance.balance.held) == (5, 2)
