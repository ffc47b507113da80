"""Credits over gRPC: grants, reservations racing for a balance, commit, release, expiry, ledger."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest

from control_plane.clock import ManualClock
from control_plane.db.pool import Pool
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._support import Caller, error_reason


def _balance(stub: ControlPlaneStub, caller: Caller, account_id: str) -> pb.Balance:
    return stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=caller.metadata).balance


def _reserve(stub: ControlPlaneStub, caller: Caller, account_id: str, amount: int, **fields: object) -> pb.Reservation:
    request = pb.ReserveCreditsRequest(account_id=account_id, amount=amount, **fields)
    return stub.ReserveCredits(request, metadata=caller.metadata).reservation


class TestReserving:
    def test_32_concurrent_reservations_of_a_balance_of_10_give_exactly_10_holds(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        account_id = make_account(credits=10)
        request = pb.ReserveCreditsRequest(account_id=account_id, amount=1, purpose="race")
        # Futures put all 32 calls in flight at once; the server has 32 worker threads.
        futures = [stub.ReserveCredits.future(request, metadata=operator.metadata) for _ in range(32)]
        granted, refused = [], []
        for future in futures:
            try:
                granted.append(future.result(timeout=30))
            except grpc.RpcError as error:
                refused.append(error)

        assert len(granted) == 10
        assert len(refused) == 22
        assert {error.code() for error in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert {error_reason(error) for error in refused} == {"INSUFFICIENT_CREDITS"}
        balance = _balance(stub, operator, account_id)
        assert (balance.total, balance.held, balance.available) == (10, 10, 0)
        with pool.connection() as conn:
            held = conn.execute(
                "SELECT count(*), sum(amount) FROM reservations WHERE account_id = %s AND state = 'held'",
                (account_id,),
            ).fetchone()
        assert held == (10, 10)

    def test_reserving_more_than_available_says_how_much_is_available(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=3)
        with pytest.raises(grpc.RpcError) as caught:
            _reserve(stub, operator, account_id, 5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "3 credits available" in caught.value.details()

    def test_reservation_expires_after_the_default_ttl(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], clock: ManualClock
    ) -> None:
        account_id = make_account(credits=5)
        reservation = _reserve(stub, operator, account_id, 2)
        assert reservation.expires_at.ToDatetime() == (clock.now() + timedelta(seconds=600)).replace(tzinfo=None)
        assert reservation.state == pb.RESERVATION_STATE_HELD


class TestSettling:
    def test_commit_charges_exactly_once(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=10)
        reservation = _reserve(stub, operator, account_id, 4)
        committed = stub.CommitReservation(
            pb.CommitReservationRequest(reservation_id=reservation.reservation_id), metadata=operator.metadata
        )
        assert committed.reservation.state == pb.RESERVATION_STATE_COMMITTED
        assert (committed.balance.total, committed.balance.held) == (6, 0)

        with pytest.raises(grpc.RpcError) as caught:
            stub.CommitReservation(
                pb.CommitReservationRequest(reservation_id=reservation.reservation_id), metadata=operator.metadata
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already committed" in caught.value.details()
        assert error_reason(caught.value) == "RESERVATION_SETTLED"
        assert _balance(stub, operator, account_id).total == 6

    def test_release_returns_the_credits_and_charges_nothing(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=10)
        reservation = _reserve(stub, operator, account_id, 7)
        assert _balance(stub, operator, account_id).available == 3
        released = stub.ReleaseReservation(
            pb.ReleaseReservationRequest(reservation_id=reservation.reservation_id), metadata=operator.metadata
        )
        assert released.reservation.state == pb.RESERVATION_STATE_RELEASED
        assert (released.balance.total, released.balance.held, released.balance.available) == (10, 0, 10)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CommitReservation(
                pb.CommitReservationRequest(reservation_id=reservation.reservation_id), metadata=operator.metadata
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    def test_an_expired_reservation_cannot_be_committed(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], clock: ManualClock
    ) -> None:
        account_id = make_account(credits=10)
        reservation = _reserve(stub, operator, account_id, 4, ttl_seconds=30)
        clock.advance(timedelta(seconds=31))
        with pytest.raises(grpc.RpcError) as caught:
            stub.CommitReservation(
                pb.CommitReservationRequest(reservation_id=reservation.reservation_id), metadata=operator.metadata
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "reservation expired" in caught.value.details()
        assert error_reason(caught.value) == "RESERVATION_EXPIRED"
        balance = _balance(stub, operator, account_id)
        assert (balance.total, balance.held) == (10, 4)
        # Releasing after expiry is allowed: the caller gives the hold back early.
        released = stub.ReleaseReservation(
            pb.ReleaseReservationRequest(reservation_id=reservation.reservation_id), metadata=operator.metadata
        )
        assert released.balance.available == 10

    def test_a_reservation_can_be_committed_up_to_its_expiry_instant(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], clock: ManualClock
    ) -> None:
        account_id = make_account(credits=10)
        reservation = _reserve(stub, operator, account_id, 4, ttl_seconds=30)
        clock.advance(timedelta(seconds=30))
        committed = stub.CommitReservation(
            pb.CommitReservationRequest(reservation_id=reservation.reservation_id), metadata=operator.metadata
        )
        assert committed.balance.total == 6


class TestLedger:
    def test_ledger_lists_grants_and_charges_newest_first_across_pages(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=100)
        for amount in (1, 2, 3):
            stub.GrantCredits(
                pb.GrantCreditsRequest(account_id=account_id, amount=amount, reason=f"top-up {amount}"),
                metadata=operator.metadata,
            )
        reservation = _reserve(stub, operator, account_id, 5, purpose="generate tiny-sd")
        stub.CommitReservation(
            pb.CommitReservationRequest(reservation_id=reservation.reservation_id), metadata=operator.metadata
        )

        entries: list[pb.LedgerEntry] = []
        token = ""
        pages = 0
        while True:
            page = stub.ListLedger(
                pb.ListLedgerRequest(account_id=account_id, page_size=2, page_token=token), metadata=operator.metadata
            )
            entries.extend(page.entries)
            pages += 1
            token = page.next_page_token
            if not token:
                break

        assert pages == 3
        assert [(e.kind, e.delta) for e in entries] == [
            ("charge", -5),
            ("grant", 3),
            ("grant", 2),
            ("grant", 1),
            ("grant", 100),
        ]
        assert entries[0].reservation_id == reservation.reservation_id
        assert entries[0].reason == "generate tiny-sd"
        assert sum(e.delta for e in entries) == _balance(stub, operator, account_id).total == 101
