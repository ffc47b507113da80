"""Creating and reading accounts: the age gate, tiers, defaults, initial credits."""

from __future__ import annotations

import grpc
import pytest

from control_plane.db.pool import Pool
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._support import CLOCK_START, Caller, error_reason


def _rows(pool: Pool, table: str) -> int:
    with pool.connection() as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


class TestAgeGate:
    @pytest.mark.parametrize(
        "request_message",
        [
            pb.CreateAccountRequest(birth_date="2013-03-02", initial_credits=10),  # 12 until tomorrow
            pb.CreateAccountRequest(age_attested=12),
        ],
        ids=["birth date a day short of 13", "attested age 12"],
    )
    def test_an_account_under_13_is_refused_and_nothing_is_stored(
        self, stub: ControlPlaneStub, operator: Caller, pool: Pool, request_message: pb.CreateAccountRequest
    ) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateAccount(request_message, metadata=operator.metadata)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "at least 13" in caught.value.details()
        assert error_reason(caught.value) == "UNDER_MINIMUM_AGE"
        for table in ("accounts", "account_personal", "credit_balances", "credit_ledger"):
            assert _rows(pool, table) == 0, table

    def test_an_account_turning_13_today_is_accepted(self, stub: ControlPlaneStub, operator: Caller) -> None:
        response = stub.CreateAccount(pb.CreateAccountRequest(birth_date="2013-03-01"), metadata=operator.metadata)
        assert response.account.status == pb.ACCOUNT_STATUS_ACTIVE

    def test_birth_date_is_kept_apart_from_the_account_row(
        self, stub: ControlPlaneStub, operator: Caller, pool: Pool
    ) -> None:
        account_id = stub.CreateAccount(
            pb.CreateAccountRequest(birth_date="1990-05-17"), metadata=operator.metadata
        ).account.account_id
        with pool.connection() as conn:
            personal = conn.execute(
                "SELECT birth_date::text, age_attested FROM account_personal WHERE account_id = %s", (account_id,)
            ).fetchone()
            account_columns = {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts'"
                )
            }
        assert personal == ("1990-05-17", None)
        assert not account_columns & {"birth_date", "age_attested"}


class TestCreating:
    def test_a_new_account_has_defaults_and_its_initial_credits(self, stub: ControlPlaneStub, operator: Caller) -> None:
        response = stub.CreateAccount(
            pb.CreateAccountRequest(age_attested=30, initial_credits=25), metadata=operator.metadata
        )
        account = response.account
        assert account.tenant_id == str(operator.principal.tenant_id)
        assert account.tier == pb.TIER_FREE
        assert account.default_visibility == common_pb2.VISIBILITY_PRIVATE
        assert account.created_at.ToDatetime() == CLOCK_START.replace(tzinfo=None)
        assert (response.balance.total, response.balance.held, response.balance.available) == (25, 0, 25)
        ledger = stub.ListLedger(pb.ListLedgerRequest(account_id=account.account_id), metadata=operator.metadata)
        assert [(e.kind, e.delta, e.reason) for e in ledger.entries] == [("grant", 25, "initial credits")]

    def test_get_account_returns_what_was_created(self, stub: ControlPlaneStub, operator: Caller) -> None:
        created = stub.CreateAccount(
            pb.CreateAccountRequest(
                birth_date="1980-01-01", tier=pb.TIER_PREMIUM, default_visibility=common_pb2.VISIBILITY_PUBLIC
            ),
            metadata=operator.metadata,
        ).account
        fetched = stub.GetAccount(pb.GetAccountRequest(account_id=created.account_id), metadata=operator.metadata)
        assert fetched.account == created
        assert fetched.account.tier == pb.TIER_PREMIUM

    def test_an_unknown_account_is_not_found(self, stub: ControlPlaneStub, operator: Caller) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetAccount(
                pb.GetAccountRequest(account_id="00000000-0000-4000-8000-000000000000"), metadata=operator.metadata
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    def test_a_suspended_account_cannot_reserve(self, stub: ControlPlaneStub, operator: Caller, pool: Pool) -> None:
        account_id = stub.CreateAccount(
            pb.CreateAccountRequest(age_attested=40, initial_credits=5), metadata=operator.metadata
        ).account.account_id
        with pool.connection() as conn:
            conn.execute("UPDATE accounts SET status = 'suspended' WHERE account_id = %s", (account_id,))
        with pytest.raises(grpc.RpcError) as caught:
            stub.ReserveCredits(pb.ReserveCreditsRequest(account_id=account_id, amount=1), metadata=operator.metadata)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(caught.value) == "ACCOUNT_SUSPENDED"
