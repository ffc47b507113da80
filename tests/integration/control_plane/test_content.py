"""Content over gRPC: atomic stores (with their charge), reading bytes back, listing pages."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest

from control_plane.clock import ManualClock
from control_plane.db.pool import Pool
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._support import Caller, StoredBlobs, SwitchedBlobStore, png_bytes

pytestmark = pytest.mark.blob_stores


def _item(seed: int = 0, **fields: object) -> pb.NewContent:
    values: dict[str, object] = {
        "kind": pb.CONTENT_KIND_GENERATED,
        "media_type": "image/png",
        "data": png_bytes(seed),
        "prompt": f"a lighthouse at dusk #{seed}",
        "parameters": common_pb2.GenerationParameters(model="tiny-sd", width=64, height=64, steps=2, seed=seed),
    }
    values.update(fields)
    return pb.NewContent(**values)  # type: ignore[arg-type]


def _count(pool: Pool, table: str) -> int:
    with pool.connection() as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _reserve(stub: ControlPlaneStub, operator: Caller, account_id: str, amount: int) -> pb.Reservation:
    request = pb.ReserveCreditsRequest(account_id=account_id, amount=amount)
    return stub.ReserveCredits(request, metadata=operator.metadata).reservation


class TestStoring:
    def test_store_with_reservation_stores_every_item_and_charges_once(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], stored_blobs: StoredBlobs
    ) -> None:
        account_id = make_account(credits=10)
        reservation = _reserve(stub, operator, account_id, 4)
        response = stub.StoreContent(
            pb.StoreContentRequest(
                account_id=account_id,
                items=[_item(1), _item(2), _item(3, visibility=common_pb2.VISIBILITY_PUBLIC)],
                commit_reservation_id=reservation.reservation_id,
            ),
            metadata=operator.metadata,
        )
        assert [c.sha256 for c in response.contents] == [hashlib.sha256(png_bytes(s)).hexdigest() for s in (1, 2, 3)]
        assert [c.visibility for c in response.contents] == [
            common_pb2.VISIBILITY_PRIVATE,  # the account default
            common_pb2.VISIBILITY_PRIVATE,
            common_pb2.VISIBILITY_PUBLIC,
        ]
        assert response.contents[0].parameters.model == "tiny-sd"
        assert response.contents[0].parameters.seed == 1
        assert response.reservation.state == pb.RESERVATION_STATE_COMMITTED
        assert (response.balance.total, response.balance.held) == (6, 0)
        assert len(stored_blobs()) == 3

    def test_a_bad_item_stores_nothing_and_leaves_the_reservation_held(
        self,
        stub: ControlPlaneStub,
        operator: Caller,
        make_account: Callable[..., str],
        stored_blobs: StoredBlobs,
        pool: Pool,
    ) -> None:
        account_id = make_account(credits=10)
        reservation = _reserve(stub, operator, account_id, 4)
        with pytest.raises(grpc.RpcError) as caught:
            stub.StoreContent(
                pb.StoreContentRequest(
                    account_id=account_id,
                    items=[_item(1), _item(2, data=b"GIF89a not a png")],
                    commit_reservation_id=reservation.reservation_id,
                ),
                metadata=operator.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("items[1].data:")
        assert _count(pool, "content") == 0
        assert stored_blobs() == {}
        balance = stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=operator.metadata).balance
        assert (balance.total, balance.held) == (10, 4)

    def test_a_failed_commit_removes_the_blobs_already_written(
        self,
        stub: ControlPlaneStub,
        operator: Caller,
        make_account: Callable[..., str],
        stored_blobs: StoredBlobs,
        pool: Pool,
        clock: ManualClock,
    ) -> None:
        # The items are valid, so blobs are written; the commit then fails inside the
        # transaction (the reservation has expired), and the store must leave no trace.
        account_id = make_account(credits=10)
        reservation = _reserve(stub, operator, account_id, 4)
        clock.advance(timedelta(hours=1))
        with pytest.raises(grpc.RpcError) as caught:
            stub.StoreContent(
                pb.StoreContentRequest(
                    account_id=account_id, items=[_item(1), _item(2)], commit_reservation_id=reservation.reservation_id
                ),
                metadata=operator.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _count(pool, "content") == 0
        assert stored_blobs() == {}
        with pool.connection() as conn:
            state = conn.execute(
                "SELECT state FROM reservations WHERE reservation_id = %s", (reservation.reservation_id,)
            ).fetchone()
        assert state == ("held",)

    def test_a_reservation_of_another_account_is_not_committed(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        payer, other = make_account(credits=10), make_account(credits=10)
        reservation = _reserve(stub, operator, payer, 4)
        with pytest.raises(grpc.RpcError) as caught:
            stub.StoreContent(
                pb.StoreContentRequest(
                    account_id=other, items=[_item(1)], commit_reservation_id=reservation.reservation_id
                ),
                metadata=operator.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert _count(pool, "content") == 0

    @pytest.mark.parametrize("count", [0, 17])
    def test_item_count_outside_1_to_16_is_refused(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], count: int
    ) -> None:
        account_id = make_account()
        with pytest.raises(grpc.RpcError) as caught:
            stub.StoreContent(
                pb.StoreContentRequest(account_id=account_id, items=[_item(i) for i in range(count)]),
                metadata=operator.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("items:")

    def test_storing_records_the_account_as_active(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], clock: ManualClock
    ) -> None:
        account_id = make_account()
        later = clock.advance(timedelta(days=3))
        stub.StoreContent(pb.StoreContentRequest(account_id=account_id, items=[_item()]), metadata=operator.metadata)
        account = stub.GetAccount(pb.GetAccountRequest(account_id=account_id), metadata=operator.metadata).account
        assert account.last_active_at.ToDatetime() == later.replace(tzinfo=None)

    def test_each_stored_item_has_an_audit_row_without_the_prompt(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        account_id = make_account()
        stored = stub.StoreContent(
            pb.StoreContentRequest(account_id=account_id, items=[_item(1), _item(2)]), metadata=operator.metadata
        )
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT target_id, actor_key_id, details::text FROM audit_log WHERE action = 'content.store'"
            ).fetchall()
        assert sorted(row[0] for row in rows) == sorted(c.content_id for c in stored.contents)
        assert {row[1] for row in rows} == {operator.principal.key_id}
        assert not any("lighthouse" in row[2] for row in rows)


class TestReading:
    def test_get_content_returns_the_stored_bytes(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account()
        stored = stub.StoreContent(
            pb.StoreContentRequest(account_id=account_id, items=[_item(7)]), metadata=operator.metadata
        ).contents[0]

        with_data = stub.GetContent(
            pb.GetContentRequest(content_id=stored.content_id, include_data=True), metadata=operator.metadata
        )
        assert with_data.data == png_bytes(7)
        assert with_data.content == stored
        without_data = stub.GetContent(pb.GetContentRequest(content_id=stored.content_id), metadata=operator.metadata)
        assert without_data.data == b""

    def test_a_missing_blob_is_an_internal_error_with_a_request_id(
        self,
        stub: ControlPlaneStub,
        operator: Caller,
        make_account: Callable[..., str],
        blobs: SwitchedBlobStore,
        stored_blobs: StoredBlobs,
    ) -> None:
        account_id = make_account()
        stored = stub.StoreContent(
            pb.StoreContentRequest(account_id=account_id, items=[_item()]), metadata=operator.metadata
        ).contents[0]
        blobs.delete_many(list(stored_blobs()))
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetContent(
                pb.GetContentRequest(content_id=stored.content_id, include_data=True),
                metadata=(*operator.metadata, ("x-request-id", "req-missing-blob")),
            )
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert caught.value.details() == "internal error (request id req-missing-blob)"

    def test_list_content_pages_through_everything_newest_first(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], clock: ManualClock
    ) -> None:
        account_id = make_account()
        stored_ids: list[str] = []
        # Two stores at one instant and three at later ones: ties on created_at must not
        # make pagination skip or repeat items.
        for seconds in (0, 0, 5, 10, 10):
            clock.set(clock.now() + timedelta(seconds=seconds))
            response = stub.StoreContent(
                pb.StoreContentRequest(account_id=account_id, items=[_item(len(stored_ids)), _item(99)]),
                metadata=operator.metadata,
            )
            stored_ids.extend(c.content_id for c in response.contents)

        listed: list[pb.Content] = []
        token = ""
        while True:
            page = stub.ListContent(
                pb.ListContentRequest(account_id=account_id, page_size=3, page_token=token), metadata=operator.metadata
            )
            assert len(page.contents) <= 3
            listed.extend(page.contents)
            token = page.next_page_token
            if not token:
                break

        assert sorted(c.content_id for c in listed) == sorted(stored_ids)
        times = [c.created_at.ToDatetime() for c in listed]
        assert times == sorted(times, reverse=True)

    def test_a_page_token_of_another_account_is_invalid(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        first, second = make_account(), make_account()
        stub.StoreContent(
            pb.StoreContentRequest(account_id=first, items=[_item(1), _item(2)]), metadata=operator.metadata
        )
        token = stub.ListContent(
            pb.ListContentRequest(account_id=first, page_size=1), metadata=operator.metadata
        ).next_page_token
        assert token
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListContent(pb.ListContentRequest(account_id=second, page_token=token), metadata=operator.metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("page_token:")
