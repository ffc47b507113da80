"""The blob store's disk fills up: StoreContent fails cleanly, and works again once space is freed.

Scenario: the real control plane (`python -m control_plane serve`, its own process) with its
blob store on a filesystem that really runs out of space:

- a 2 MiB tmpfs mounted for the test (needs CAP_SYS_ADMIN; we run as root), filled to the
  last byte with a filler file; or, where mounting is not permitted, the blob store on an
  ordinary disk and the control plane under RLIMIT_FSIZE (SIGXFSZ ignored), so writing a blob
  past the limit fails with EFBIG. The test records which one ran as the
  `disk_full_mechanism` property (and prints it).

Both run where mounting is permitted (the tmpfs case falls back to the rlimit elsewhere).

A generation's store (StoreContent committing its reservation) then fails with
RESOURCE_EXHAUSTED and ErrorInfo reason BLOB_STORE_FULL, saying the blob store is full, and
leaves nothing: no content row, no blob and no temporary file, the reservation still held
and uncommitted, the balance unchanged. Once space is freed (the filler deleted; under the
rlimit, a blob small enough) the same store succeeds and charges once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import grpc
import pytest

from control_plane.api_keys import ensure_operator_key
from control_plane.db.migrations import apply_migrations
from control_plane.db.pool import Pool, open_pool
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.faults._support import control_plane_process, fill_up, noisy_png, small_tmpfs
from tests.integration._postgres import fresh_database, postgres_server
from tests.integration.control_plane._support import bearer, error_reason

FSIZE_LIMIT_BYTES = 256 * 1024
BIG_ITEM_BYTES = 512 * 1024
"""Over the rlimit; on the full tmpfs any item fails."""


@pytest.fixture
def own_database_url() -> Iterator[str]:
    """A database of this test's own."""
    with postgres_server() as server, fresh_database(server, prefix="atelier_faults") as url:
        yield url


@pytest.mark.parametrize("wanted", ["tmpfs", "rlimit_fsize"])
def test_a_full_blob_store_refuses_the_store_and_leaves_nothing_behind(
    own_database_url: str, tmp_path: Path, record_property: Callable[[str, object], None], wanted: str
) -> None:
    database_url = own_database_url
    blob_dir = tmp_path / "blobs"
    mount = small_tmpfs(blob_dir) if wanted == "tmpfs" else contextlib.nullcontext(False)
    with mount as mounted, open_pool(database_url, min_size=1, max_size=2) as pool:
        # Where mounting is not permitted the tmpfs case falls back to the rlimit.
        mechanism = "tmpfs" if mounted else "rlimit_fsize"
        record_property("disk_full_mechanism", mechanism)
        print(f"disk_full_mechanism={mechanism}")
        apply_migrations(pool)
        _, secret = ensure_operator_key(pool, "faults-disk")
        assert secret is not None
        env = {
            "ATELIER_DATABASE_URL": database_url,
            "ATELIER_HOME": str(tmp_path / "home"),
            "ATELIER_BLOB_DIR": str(blob_dir),
        }
        with (
            control_plane_process(
                env, tmp_path / "control-plane.log", file_size_limit_bytes=None if mounted else FSIZE_LIMIT_BYTES
            ) as (
                address,
                _,
            ),
            grpc.insecure_channel(address) as channel,
        ):
            stub, metadata = ControlPlaneStub(channel), bearer(secret)
            account_id = stub.CreateAccount(
                pb.CreateAccountRequest(birth_date="1990-05-17", initial_credits=100), metadata=metadata
            ).account.account_id
            _store(stub, metadata, account_id, _reserve(stub, metadata, account_id, 1), noisy_png(1000, seed=1))
            blobs_before = _blob_files(blob_dir)
            assert len(blobs_before) == 1

            filler = fill_up(blob_dir) if mounted else None
            reservation_id = _reserve(stub, metadata, account_id, 10)
            big = noisy_png(BIG_ITEM_BYTES, seed=2)
            with pytest.raises(grpc.RpcError) as refused:
                _store(stub, metadata, account_id, reservation_id, big)

            error = refused.value
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error  # type: ignore[attr-defined]
            assert error_reason(error) == "BLOB_STORE_FULL"  # type: ignore[arg-type]
            assert "blob store is full" in error.details()  # type: ignore[attr-defined]
            assert _blob_files(blob_dir) == blobs_before, "a blob or temporary file was left behind"
            assert _content_count(pool) == 1
            assert _reservation_state(pool, reservation_id) == "held"
            balance = stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=metadata).balance
            assert (balance.total, balance.held) == (99, 10)

            # Space again: the same reservation's store goes through, charged once.
            if filler is not None:
                filler.unlink()
            stored = _store(stub, metadata, account_id, reservation_id, big if mounted else noisy_png(1000, seed=3))
            assert stored.reservation.state == pb.RESERVATION_STATE_COMMITTED
            assert (stored.balance.total, stored.balance.held) == (89, 0)
            assert _content_count(pool) == 2
            assert len(_blob_files(blob_dir)) == 2


def _reserve(stub: ControlPlaneStub, metadata: tuple[tuple[str, str], ...], account_id: str, amount: int) -> str:
    request = pb.ReserveCreditsRequest(account_id=account_id, amount=amount, purpose="generate tiny-sd")
    return stub.ReserveCredits(request, metadata=metadata).reservation.reservation_id


def _store(
    stub: ControlPlaneStub, metadata: tuple[tuple[str, str], ...], account_id: str, reservation_id: str, png: bytes
) -> pb.StoreContentResponse:
    item = pb.NewContent(
        kind=pb.CONTENT_KIND_GENERATED,
        media_type="image/png",
        data=png,
        prompt="a lighthouse at dusk",
        parameters=common_pb2.GenerationParameters(model="tiny-sd", width=64, height=64, steps=2, seed=1),
    )
    request = pb.StoreContentRequest(account_id=account_id, items=[item], commit_reservation_id=reservation_id)
    return stub.StoreContent(request, metadata=metadata, timeout=30)


def _blob_files(blob_dir: Path) -> set[Path]:
    """Every file of the blob store (temporary ones included), the test's filler excluded."""
    return {p for p in blob_dir.rglob("*") if p.is_file() and p.name != "filler"}


def _content_count(pool: Pool) -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM content").fetchone()
    return int(row[0]) if row else -1


def _reservation_state(pool: Pool, reservation_id: str) -> str | None:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT state FROM reservations WHERE reservation_id = %s", (UUID(reservation_id),)
        ).fetchone()
    return str(row[0]) if row else None
