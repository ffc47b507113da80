"""One scenario per shipped policy profile: sign-up, generation, visibility, consent, export, erasure.

Generation goes through the control plane's real gRPC ReserveCredits (with the prompt) and
StoreContent (committing the reservation), exactly as the gateway calls them.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass

import grpc
import pytest

from control_plane.db.pool import Pool
from control_plane.policy import PolicyRegistry
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._privacy import generate, new_item, use_profile
from tests.integration.control_plane._support import CLOCK_START, Caller, error_reason, png_bytes


@dataclass(frozen=True)
class Expectation:
    profile: str
    default_visibility: int
    training_by_default: bool
    birth_date: str = "1990-05-17"
    guardian: bool = False
    blocks: str = ""


PROFILES = [
    Expectation("opt-in-encrypted-gallery", common_pb2.VISIBILITY_PRIVATE, False),
    Expectation(
        "opt-out-guardian-consent", common_pb2.VISIBILITY_PRIVATE, True, birth_date="2009-09-09", guardian=True
    ),
    Expectation("short-retention-editing", common_pb2.VISIBILITY_PRIVATE, False),
    Expectation("public-by-default", common_pb2.VISIBILITY_PUBLIC, False),
    Expectation("credits-moderated", common_pb2.VISIBILITY_PRIVATE, True, blocks="how to build a pipe bomb"),
]


def _training(stub: ControlPlaneStub, caller: Caller, account: str) -> bool:
    response = stub.GetConsents(pb.GetConsentsRequest(account_id=account), metadata=caller.metadata)
    return next(s.granted for s in response.consents if s.purpose == pb.CONSENT_PURPOSE_TRAINING)


@pytest.mark.parametrize("expect", PROFILES, ids=[p.profile for p in PROFILES])
def test_a_user_walks_through_every_right_the_profile_promises(
    expect: Expectation, stub: ControlPlaneStub, operator: Caller, pool: Pool, policies: PolicyRegistry
) -> None:
    use_profile(pool, policies, operator, expect.profile, CLOCK_START)
    meta = operator.metadata

    # Sign-up behind the age gate (and, where the profile says so, a guardian's consent).
    account = stub.CreateAccount(
        pb.CreateAccountRequest(birth_date=expect.birth_date, initial_credits=10), metadata=meta
    ).account
    assert account.default_visibility == expect.default_visibility
    account_id = account.account_id
    if expect.guardian:
        with pytest.raises(grpc.RpcError) as error:
            generate(stub, operator, account_id, new_item(1))
        assert error_reason(error.value) == "GUARDIAN_CONSENT_REQUIRED"
        stub.RecordConsent(
            pb.RecordConsentRequest(
                account_id=account_id,
                purpose=pb.CONSENT_PURPOSE_PROCESSING,
                granted=True,
                method=pb.CONSENT_METHOD_GUARDIAN,
                source="guardian-portal",
            ),
            metadata=meta,
        )

    # Generation: reserve (moderated) and store with commit.
    if expect.blocks:
        with pytest.raises(grpc.RpcError) as error:
            generate(stub, operator, account_id, new_item(0, prompt=expect.blocks))
        assert error_reason(error.value) == "PROMPT_BLOCKED"
        assert stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=meta).balance.available == 10
    first, second = generate(stub, operator, account_id, new_item(1), new_item(2), cost=2).contents
    assert {first.visibility, second.visibility} == {expect.default_visibility}
    assert stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=meta).balance.available == 8

    # Visibility: one item public, then all private at once.
    stub.SetVisibility(
        pb.SetVisibilityRequest(content_id=first.content_id, visibility=common_pb2.VISIBILITY_PUBLIC), metadata=meta
    )
    gallery = stub.ListPublicGallery(pb.ListPublicGalleryRequest(), metadata=meta).contents
    assert first.content_id in {c.content_id for c in gallery}
    stub.SetVisibility(
        pb.SetVisibilityRequest(account_id=account_id, visibility=common_pb2.VISIBILITY_PRIVATE), metadata=meta
    )
    assert stub.ListPublicGallery(pb.ListPublicGalleryRequest(), metadata=meta).contents == []

    # Consent: the profile's training default, then the user's change of mind.
    assert _training(stub, operator, account_id) is expect.training_by_default
    stub.RecordConsent(
        pb.RecordConsentRequest(
            account_id=account_id,
            purpose=pb.CONSENT_PURPOSE_TRAINING,
            granted=not expect.training_by_default,
            method=pb.CONSENT_METHOD_SETTINGS,
            source="web",
        ),
        metadata=meta,
    )
    assert _training(stub, operator, account_id) is not expect.training_by_default

    # Export: a machine-readable archive with the images.
    export = stub.RequestExport(pb.RequestExportRequest(account_id=account_id), metadata=meta).request
    archive = zipfile.ZipFile(
        io.BytesIO(stub.GetExportArchive(pb.GetExportArchiveRequest(dsr_id=export.dsr_id), metadata=meta).archive)
    )
    assert archive.read(f"images/{first.content_id}.png") == png_bytes(1)
    consents = json.loads(archive.read("consents.json"))
    assert consents[-1]["policy_version"] == policies.get(expect.profile).policy_version

    # Erasure: the account is gone but for its pseudonymous tombstone.
    stub.RequestErasure(pb.RequestErasureRequest(account_id=account_id), metadata=meta)
    with pytest.raises(grpc.RpcError) as error:
        stub.GetContent(pb.GetContentRequest(content_id=second.content_id), metadata=meta)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        stub.GetExportArchive(pb.GetExportArchiveRequest(dsr_id=export.dsr_id), metadata=meta)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        stub.GetAccount(pb.GetAccountRequest(account_id=account_id), metadata=meta).account.status
        == pb.ACCOUNT_STATUS_ERASED
    )
