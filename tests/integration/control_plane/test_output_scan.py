"""Generated images judged by the replica's classifier: StoreContent withholds them or flags them private, as
the tenant's policy profile says, and every verdict above its threshold leaves a moderation flag."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import grpc
import pytest

from control_plane.config import ConfigError
from control_plane.db.pool import Pool
from control_plane.policy import PolicyProfile, PolicyRegistry
from protos.atelier.v1 import common_pb2, training_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from protos.atelier.v1.training_pb2_grpc import TrainingDataStub
from tests.integration.control_plane._privacy import new_item, use_profile
from tests.integration.control_plane._support import CLOCK_START, Caller, error_reason

CLASSIFIER = "tiny-safety-checker"
BLOCKING_PROFILE = "credits-moderated"  # seed 004: "block"
FLAGGING_PROFILE = "default"  # product default: "flag_private"


def _judged(seed: int, score: float, threshold: float, **fields: Any) -> pb.NewContent:
    values: dict[str, Any] = {
        "output_verdict": pb.OutputVerdict(category="concept_3", score=score, threshold=threshold),
        "output_classifier": CLASSIFIER,
        **fields,
    }
    return new_item(seed, **values)


def _reserve(stub: ControlPlaneStub, caller: Caller, account: str, amount: int = 2) -> str:
    return stub.ReserveCredits(
        pb.ReserveCreditsRequest(account_id=account, amount=amount, purpose="generate tiny-sd", prompt="a lighthouse"),
        metadata=caller.metadata,
    ).reservation.reservation_id


def _store(stub: ControlPlaneStub, caller: Caller, account: str, reservation: str, *items: pb.NewContent) -> Any:
    return stub.StoreContent(
        pb.StoreContentRequest(account_id=account, items=list(items), commit_reservation_id=reservation),
        metadata=caller.metadata,
    )


def _flags(pool: Pool, account: str) -> list[tuple[Any, ...]]:
    with pool.connection() as conn:
        return conn.execute(
            "SELECT content_id, stage, category, action, policy, rule, score FROM moderation_flags "
            "WHERE account_id = %s ORDER BY flag_id",
            (account,),
        ).fetchall()


def _flagged(pool: Pool, content_id: str) -> bool:
    with pool.connection() as conn:
        row = conn.execute("SELECT flagged FROM content WHERE content_id = %s", (content_id,)).fetchone()
    return bool(row and row[0])


def _content_rows(pool: Pool, account: str) -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM content WHERE account_id = %s", (account,)).fetchone()
    return int(row[0]) if row else 0


class TestBlockingProfile:
    def test_an_image_above_its_threshold_is_withheld_charges_nothing_and_leaves_a_flag(  # type: ignore[no-untyped-def]
        self, pool: Pool, policies: PolicyRegistry, stub: ControlPlaneStub, operator: Caller, make_account
    ) -> None:
        use_profile(pool, policies, operator, BLOCKING_PROFILE, CLOCK_START)
        account = make_account(credits=10)
        reservation = _reserve(stub, operator, account)
        with pytest.raises(grpc.RpcError) as caught:
            _store(stub, operator, account, reservation, _judged(1, 0.1, 0.5), _judged(2, 0.0, 0.0))
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(caught.value) == "OUTPUT_BLOCKED"
        assert "nothing was stored or charged" in (caught.value.details() or "")

        balance = stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=operator.metadata).balance
        assert (balance.total, balance.held, balance.available) == (10, 0, 10)
        assert _content_rows(pool, account) == 0
        # Only the image at its threshold is flagged; the flag has no content (nothing was stored) and no image.
        [(content_id, stage, category, action, policy, rule, score)] = _flags(pool, account)
        assert (content_id, stage, category, action) == (None, "output", "concept_3", "blocked")
        assert policy == f"classifier:{CLASSIFIER}" and "threshold 0.0000" in rule and score == 0.0
        # The reservation was released with the flag: committing it now is refused.
        with pytest.raises(grpc.RpcError) as settled:
            stub.CommitReservation(pb.CommitReservationRequest(reservation_id=reservation), metadata=operator.metadata)
        assert error_reason(settled.value) == "RESERVATION_SETTLED"

    def test_images_below_their_threshold_are_stored_and_charged_without_flags(  # type: ignore[no-untyped-def]
        self, pool: Pool, policies: PolicyRegistry, stub: ControlPlaneStub, operator: Caller, make_account
    ) -> None:
        use_profile(pool, policies, operator, BLOCKING_PROFILE, CLOCK_START)
        account = make_account(credits=10)
        stored = _store(stub, operator, account, _reserve(stub, operator, account), _judged(1, 0.3, 0.9))
        assert not _flagged(pool, stored.contents[0].content_id) and stored.balance.total == 8
        assert _flags(pool, account) == []


class TestFlaggingProfile:
    def test_an_image_above_its_threshold_is_stored_private_flagged_and_never_exported(  # type: ignore[no-untyped-def]
        self, pool: Pool, policies: PolicyRegistry, stub: ControlPlaneStub, channel, operator: Caller, make_account
    ) -> None:
        use_profile(pool, policies, operator, FLAGGING_PROFILE, CLOCK_START)
        account = make_account(credits=10)
        item = _judged(7, 0.42, 0.4, visibility=common_pb2.VISIBILITY_PUBLIC)
        stored = _store(stub, operator, account, _reserve(stub, operator, account), item)
        [content] = stored.contents
        assert _flagged(pool, content.content_id) and content.visibility == common_pb2.VISIBILITY_PRIVATE
        assert stored.balance.total == 8
        [(content_id, _, category, action, policy, _, score)] = _flags(pool, account)
        assert (str(content_id), category, action, policy) == (
            content.content_id,
            "concept_3",
            "flagged",
            "classifier:tiny-safety-checker",
        )
        assert math.isclose(score, 0.42, abs_tol=1e-6)

        with pytest.raises(grpc.RpcError) as caught:
            stub.SetVisibility(
                pb.SetVisibilityRequest(content_id=content.content_id, visibility=common_pb2.VISIBILITY_PUBLIC),
                metadata=operator.metadata,
            )
        assert error_reason(caught.value) == "CONTENT_FLAGGED"
        eligibility = TrainingDataStub(channel).CheckTrainingEligibility(
            training_pb2.CheckTrainingEligibilityRequest(sha256=hashlib.sha256(item.data).hexdigest()),
            metadata=operator.metadata,
        )
        assert not eligibility.eligible and eligibility.reason == training_pb2.INELIGIBILITY_REASON_FLAGGED


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (_judged(1, math.nan, 0.5), "items[0].output_verdict.score"),
        (_judged(1, 0.5, 1.5), "items[0].output_verdict.threshold"),
        (_judged(1, 0.5, 0.5, output_classifier=""), "items[0].output_classifier"),
        (
            new_item(1, output_verdict=pb.OutputVerdict(category="Bad Category", score=0.1, threshold=0.5)),
            "items[0].output_verdict.category",
        ),
        (_judged(1, 0.5, 0.5, kind=pb.CONTENT_KIND_UPLOAD), "items[0].output_verdict"),
    ],
    ids=["nan score", "threshold over 1", "no classifier", "bad category", "verdict on an upload"],
)
def test_a_malformed_verdict_is_invalid_argument_and_stores_nothing(  # type: ignore[no-untyped-def]
    pool: Pool, stub: ControlPlaneStub, operator: Caller, make_account, item: pb.NewContent, field: str
) -> None:
    account = make_account(credits=10)
    with pytest.raises(grpc.RpcError) as caught:
        stub.StoreContent(pb.StoreContentRequest(account_id=account, items=[item]), metadata=operator.metadata)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(field)
    assert _content_rows(pool, account) == 0 and _flags(pool, account) == []


def test_a_profile_names_a_known_output_classifier_action() -> None:
    assert PolicyProfile.from_mapping({"moderation": {"output_classifier_action": "block"}}, where="p").moderation
    with pytest.raises(ConfigError, match="output_classifier_action"):
        PolicyProfile.from_mapping({"moderation": {"output_classifier_action": "delete"}}, where="p")
