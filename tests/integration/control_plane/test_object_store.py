"""Content in an S3 bucket (SeaweedFS): selected by ATELIER_BLOB_URL, sealed before upload,
erased from the bucket, shared by servers on one database, an outage answered UNAVAILABLE;
training exports published to a bucket prefix."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import grpc
import obstore
import pyarrow.parquet as pq
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from atelier.cli import main
from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.adapters.export_targets import MANIFEST_NAME, STAGING_PREFIX, S3ExportTarget
from control_plane.adapters.s3_blobstore import S3BlobStore, list_object_names, open_s3_store
from control_plane.audit import SYSTEM
from control_plane.bootstrap import bootstrap
from control_plane.config import ControlPlaneConfig
from control_plane.db.pool import Pool
from control_plane.entrypoints.server import add_listen_port, build_server
from control_plane.errors import BlobStoreUnavailable
from control_plane.policy import PolicyRegistry
from control_plane.sweeper import run_sweep
from control_plane.training_exports import TrainingExport, create_training_export
from protos.atelier.v1 import common_pb2, control_plane_pb2_grpc
from protos.atelier.v1 import control_plane_pb2 as pb
from tests.integration._seaweedfs import SeaweedS3, seaweedfs_server
from tests.integration.control_plane._privacy import generate, new_item
from tests.integration.control_plane._support import REPO_ROOT, Caller, error_reason, png_bytes
from tests.integration.control_plane._training import grant_training_consent, store
from tests.integration.control_plane.conftest import TEST_BUCKET

ServerFromEnv = Callable[[Path, str, SeaweedS3], AbstractContextManager[control_plane_pb2_grpc.ControlPlaneStub]]


@pytest.fixture
def server_from_env(monkeypatch: pytest.MonkeyPatch, database_url: str, master_key_file: Path) -> ServerFromEnv:
    """Starts control-plane servers as `python -m control_plane` builds them, from ATELIER_* and AWS_*
    variables: the session's database and master key, a home, a blob URL and an S3 server."""
    monkeypatch.delenv("ATELIER_BLOB_DIR", raising=False)

    @contextmanager
    def serve(home: Path, blob_url: str, s3: SeaweedS3) -> Iterator[control_plane_pb2_grpc.ControlPlaneStub]:
        environ = {
            "ATELIER_DATABASE_URL": database_url,
            "ATELIER_MASTER_KEY_FILE": str(master_key_file),
            "ATELIER_HOME": str(home),
            "ATELIER_BLOB_URL": blob_url,
            "ATELIER_SWEEP_INTERVAL_S": "0",
            "ATELIER_CONTROL_PLANE_METRICS_PORT": "0",
            **s3.environ,
        }
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

    return serve


def _files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


class TestContentInTheBucket:
    def test_content_lands_sealed_in_the_bucket_is_read_by_a_second_server_and_erasure_removes_it(
        self,
        server_from_env: ServerFromEnv,
        tmp_path: Path,
        s3_server: SeaweedS3,
        operator: Caller,
        make_account: Callable[..., str],
    ) -> None:
        blob_url = f"s3://{TEST_BUCKET}/servers-{secrets.token_hex(4)}"
        bucket = S3BlobStore(blob_url, s3_server.overrides)
        prompt = "a plaintext-canary lighthouse"
        image = png_bytes(11, size=16)
        first_home, second_home = tmp_path / "first", tmp_path / "second"
        with server_from_env(first_home, blob_url, s3_server) as first:
            account = make_account(credits=5)
            response = generate(first, operator, account, new_item(prompt=prompt, data=image))
            stored = response.contents[0]
            # The server signs (and, from 256x256 on, watermarks) generated images as it stores them.
            stored_file = response.stored_data[0]
            assert stored_file.startswith(b"\x89PNG") and stored_file != image

            objects = list(bucket.list_keys())
            assert objects == [f"{account}/{stored.content_id}"]
            sealed = bucket.get(objects[0])
            assert image not in sealed and image[8:40] not in sealed and prompt.encode() not in sealed
            assert _files(first_home / "blobs") == []  # nothing under the (default) blob directory

            with server_from_env(second_home, blob_url, s3_server) as second:
                read = second.GetContent(
                    pb.GetContentRequest(content_id=stored.content_id, include_data=True), metadata=operator.metadata
                )
                assert read.data == stored_file and read.content.prompt == prompt

            first.RequestErasure(
                pb.RequestErasureRequest(account_id=account, content_id=stored.content_id), metadata=operator.metadata
            )
            assert list(bucket.list_keys()) == []


class TestOutage:
    def test_while_the_bucket_is_down_stores_reads_and_sweeps_are_unavailable_and_change_nothing(
        self,
        server_from_env: ServerFromEnv,
        tmp_path: Path,
        pool: Pool,
        policies: PolicyRegistry,
        operator: Caller,
        make_account: Callable[..., str],
    ) -> None:
        # A server of its own: this test stops it.
        with seaweedfs_server() as s3:
            s3.create_bucket(TEST_BUCKET)
            url = f"s3://{TEST_BUCKET}/outage"
            with server_from_env(tmp_path, url, s3) as stub:
                account = make_account(credits=5)
                kept = generate(stub, operator, account, new_item(1)).contents[0]
                s3.stop()
                with pytest.raises(grpc.RpcError) as stored:
                    generate(stub, operator, account, new_item(2), new_item(3), cost=2)
                with pytest.raises(grpc.RpcError) as read:
                    stub.GetContent(
                        pb.GetContentRequest(content_id=kept.content_id, include_data=True), metadata=operator.metadata
                    )
                balance = stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=operator.metadata)
            with pytest.raises(BlobStoreUnavailable):
                # Free tier: generated images go 30 days after their creation (by this server's wall clock).
                run_sweep(pool, S3BlobStore(url, s3.overrides), policies, now=datetime.now(UTC) + timedelta(days=31))

        for error in (stored.value, read.value):
            assert error.code() == grpc.StatusCode.UNAVAILABLE and error_reason(error) == "BLOB_STORE_UNAVAILABLE"
            assert "retry" in (error.details() or "")
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            assert status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        with pool.connection() as conn:
            # The failed store left no row; the failed sweep's batch rolled back, so the row stays.
            assert [row[0] for row in conn.execute("SELECT content_id FROM content").fetchall()] == [
                UUID(kept.content_id)
            ]
            states = conn.execute("SELECT state FROM reservations WHERE account_id = %s ORDER BY amount", (account,))
            # The second reservation is not committed (the gateway releases it): nothing charged.
            assert [row[0] for row in states.fetchall()] == ["committed", "held"]
        assert (balance.balance.total, balance.balance.held) == (4, 2)


class _PublishKilled(Exception):
    """Stands for the process dying between the export's commit and its publication."""


class _DiesBeforePublishing(S3ExportTarget):
    def publish(self, export_id: UUID, directory: Path) -> None:
        raise _PublishKilled(str(export_id))


def _consenting_public_items(stub, operator: Caller, make_account, count: int) -> None:  # type: ignore[no-untyped-def]
    account = make_account(credits=10)
    grant_training_consent(stub, operator, account)
    store(stub, operator, account, count, visibility=common_pb2.VISIBILITY_PUBLIC)


class TestTrainingExportToTheBucket:
    def test_the_cli_publishes_parquet_and_the_manifest_under_the_prefix_and_leaves_no_staging(  # type: ignore[no-untyped-def]
        self, cli_env, capsys, monkeypatch, s3_server: SeaweedS3, clock, stub, operator, make_account
    ) -> None:
        for name, value in s3_server.environ.items():
            monkeypatch.setenv(name, value)
        _consenting_public_items(stub, operator, make_account, 3)
        url = f"s3://{TEST_BUCKET}/exports-{secrets.token_hex(4)}"

        code = main(["export", "training", "-o", url, "--as-of", clock.now().isoformat(), "--json"])

        output = json.loads(capsys.readouterr().out)
        assert code == 0, output
        export_id = output["export_id"]
        assert output["location"] == f"{url}/{export_id}" and output["items"] == 3
        target = S3ExportTarget(url, s3_server.overrides)
        names = sorted(list_object_names(target.store))
        assert names == [f"{export_id}/{MANIFEST_NAME}", f"{export_id}/part-00000.parquet"]
        manifest = json.loads(obstore.get(target.store, names[0]).bytes().to_bytes())
        data = obstore.get(target.store, names[1]).bytes().to_bytes()
        assert manifest["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
        assert pq.read_table(io.BytesIO(data)).num_rows == 3

    def test_a_committed_export_killed_before_publishing_is_published_by_the_next_and_an_uncommitted_one_dropped(  # type: ignore[no-untyped-def]
        self, pool, blobs, keys, policies, clock, s3_server: SeaweedS3, stub, operator, make_account
    ) -> None:
        _consenting_public_items(stub, operator, make_account, 2)
        url = f"s3://{TEST_BUCKET}/exports-{secrets.token_hex(4)}"
        target = S3ExportTarget(url, s3_server.overrides)
        never_committed = uuid4()
        obstore.put(target.store, f"{STAGING_PREFIX}{never_committed}/part-00000.parquet", b"half")

        def export(into: S3ExportTarget) -> TrainingExport:
            return create_training_export(
                pool, EncryptedBlobStore(blobs), keys, policies, output_dir=into, actor=SYSTEM, now=clock.now()
            )

        with pytest.raises(_PublishKilled) as killed:
            export(_DiesBeforePublishing(url, s3_server.overrides))
        first = str(killed.value)
        staged = sorted(list_object_names(target.store, f"{STAGING_PREFIX}{first}"))
        assert staged == [f"{STAGING_PREFIX}{first}/{MANIFEST_NAME}", f"{STAGING_PREFIX}{first}/part-00000.parquet"]
        assert list_object_names(target.store, first) == []  # nothing published yet

        second = export(target)

        names = sorted(list_object_names(target.store))
        assert names == sorted(
            f"{export_id}/{name}"
            for export_id in (first, second.export_id)
            for name in (MANIFEST_NAME, "part-00000.parquet")
        )


def test_the_content_crypto_benchmark_measures_the_bucket(s3_server: SeaweedS3) -> None:
    script = REPO_ROOT / "benchmarks" / "content_crypto.py"
    url = f"s3://{TEST_BUCKET}/bench-{secrets.token_hex(4)}"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", "--store", url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **s3_server.environ},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert figures["store"] == "s3" and figures["blobs"] == 32
    for arm in ("plain_put", "plain_get", "sealed_put", "sealed_get"):
        assert figures[f"{arm}_mb_s"] > 0 and figures[f"{arm}_ms"] > 0
    assert figures["put_ratio"] > 0 and figures["get_ratio"] > 0
    assert list_object_names(open_s3_store(url, s3_server.overrides)) == []  # it cleans up after itself
