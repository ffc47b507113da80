"""Moderation: blocked prompts charge nothing and leave a flag; flagged outputs stay private."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import grpc
import pytest

from control_plane.db.pool import Pool
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._privacy import new_item
from tests.integration.control_plane._support import Caller, error_reason

BLOCKED = "a gore scene with a beheading"


def _balance(stub: ControlPlaneStub, caller: Caller, account: str) -> pb.Balance:
    return stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=caller.metadata).balance


class TestPrompts:
    def test_a_blocked_prompt_reserves_nothing_and_leaves_a_flag_without_the_prompt(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        account = make_account(credits=5)
        with pytest.raises(grpc.RpcError) as error:
            stub.ReserveCredits(
                pb.ReserveCreditsRequest(account_id=account, amount=2, prompt=BLOCKED), metadata=operator.metadata
            )
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error.value) == "PROMPT_BLOCKED"
        assert "violence" in error.value.details() and BLOCKED not in error.value.details()
        balance = _balance(stub, operator, account)
        assert (balance.total, balance.held) == (5, 0)
        with pool.connection() as conn:
            flags = conn.execute(
                """
                SELECT account_id::text, stage, category, rule, action, prompt_sha256, prompt_text
                FROM moderation_flags
                """
            ).fetchall()
            reservations = conn.execute("SELECT count(*) FROM reservations").fetchone()[0]
            audit_text = conn.execute("SELECT string_agg(details::text, ' ') FROM audit_log").fetchone()[0]
        assert flags == [
            (account, "prompt", "violence", "gore", "blocked", hashlib.sha256(BLOCKED.encode()).hexdigest(), None)
        ]
        assert reservations == 0
        assert "beheading" not in audit_text

    def test_an_acceptable_prompt_reserves_as_before(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account = make_account(credits=5)
        stub.ReserveCredits(
            pb.ReserveCreditsRequest(account_id=account, amount=2, prompt="a calm lake"), metadata=operator.metadata
        )
        assert _balance(stub, operator, account).held == 2

    def test_a_prompt_over_2000_characters_is_invalid(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        with pytest.raises(grpc.RpcError) as error:
            stub.ReserveCredits(
                pb.ReserveCreditsRequest(account_id=make_account(credits=5), amount=1, prompt="x" * 2001),
                metadata=operator.metadata,
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith("prompt")


class TestOutputs:
    def test_a_flagged_output_is_stored_private_and_can_never_be_published(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        account = make_account(credits=5, default_visibility=common_pb2.VISIBILITY_PUBLIC)
        flagged, fine = stub.StoreContent(
            pb.StoreContentRequest(account_id=account, items=[new_item(1, prompt=BLOCKED), new_item(2)]),
            metadata=operator.metadata,
        ).contents
        assert flagged.visibility == common_pb2.VISIBILITY_PRIVATE
        assert fine.visibility == common_pb2.VISIBILITY_PUBLIC
        with pytest.raises(grpc.RpcError) as error:
            stub.SetVisibility(
                pb.SetVisibilityRequest(content_id=flagged.content_id, visibility=common_pb2.VISIBILITY_PUBLIC),
                metadata=operator.metadata,
            )
        assert error_reason(error.value) == "CONTENT_FLAGGED"
        stub.SetVisibility(
            pb.SetVisibilityRequest(account_id=account, visibility=common_pb2.VISIBILITY_PUBLIC),
            metadata=operator.metadata,
        )
        gallery = stub.ListPublicGallery(pb.ListPublicGalleryRequest(), metadata=operator.metadata)
        assert [c.content_id for c in gallery.contents] == [fine.content_id]
        with pool.connection() as conn:
            (flag,) = conn.execute("SELECT content_id::text, stage, action FROM moderation_flags").fetchall()
        assert flag == (flagged.content_id, "output", "flagged")
