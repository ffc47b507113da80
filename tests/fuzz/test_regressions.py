"""Requests the fuzzers found answered with INTERNAL, kept as plain examples so they stay fixed."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1 import training_pb2 as tpb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from protos.atelier.v1.training_pb2_grpc import TrainingDataStub
from tests.fuzz._world import World, forged_tokens


def _code(call, request, metadata) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        assert "internal error" not in (error.details() or ""), error.details()
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("seconds", [253402300800, 2**63 - 1, -62135596801, -(2**63)])
def test_an_as_of_outside_the_timestamp_range_is_an_invalid_argument(
    world: World, stub: ControlPlaneStub, seconds: int
) -> None:
    request = pb.ListDsrRequestsRequest(overdue_only=True, as_of=Timestamp(seconds=seconds))
    assert _code(stub.ListDsrRequests, request, world.tenants["a"].admin.metadata) == grpc.StatusCode.INVALID_ARGUMENT


def test_an_as_of_with_nanos_out_of_range_is_an_invalid_argument(world: World, stub: ControlPlaneStub) -> None:
    request = pb.ListDsrRequestsRequest(as_of=Timestamp(seconds=0, nanos=-1))
    assert _code(stub.ListDsrRequests, request, world.tenants["a"].admin.metadata) == grpc.StatusCode.INVALID_ARGUMENT


def test_forged_page_tokens_are_answered_without_internal_errors(
    world: World, stub: ControlPlaneStub, channel: grpc.Channel
) -> None:
    training = TrainingDataStub(channel)
    tenant = world.tenants["a"]
    md = tenant.admin.metadata
    codes = set()
    for token in forged_tokens(world):
        for call, request in (
            (stub.ListLedger, pb.ListLedgerRequest(account_id=tenant.rich, page_token=token)),
            (stub.ListAuditEntries, pb.ListAuditEntriesRequest(account_id=tenant.rich, page_token=token)),
            (stub.ListContent, pb.ListContentRequest(account_id=tenant.rich, page_token=token)),
            (stub.ListPublicGallery, pb.ListPublicGalleryRequest(page_token=token)),
            (training.ListRemovals, tpb.ListRemovalsRequest(export_id=world.export_id, page_token=token)),
        ):
            code = _code(call, request, md)
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (call, token, code)
            codes.add(code)
    assert codes == {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


@pytest.mark.parametrize("junk", [b"\x00", b"\x0a\x05ab", b"\x0a\x03\xff\xfe\xfd", b"\x08" + b"\xff" * 11])
def test_bytes_that_are_not_a_request_message_are_an_invalid_argument(
    world: World, channel: grpc.Channel, junk: bytes
) -> None:
    get_account = channel.unary_unary("/atelier.v1.ControlPlane/GetAccount")
    with pytest.raises(grpc.RpcError) as caught:
        get_account(junk, metadata=world.tenants["a"].admin.metadata, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "request: is not a valid protobuf message of this method; send the message its .proto declares"
    )


@pytest.mark.parametrize("age", [151, 40_000, 2**32 - 1])
def test_an_attested_age_out_of_range_is_refused_even_beside_a_birth_date(
    world: World, stub: ControlPlaneStub, age: int
) -> None:
    request = pb.CreateAccountRequest(birth_date="1990-05-17", age_attested=age)
    assert _code(stub.CreateAccount, request, world.tenants["a"].admin.metadata) == grpc.StatusCode.INVALID_ARGUMENT


def test_strings_with_nul_are_an_invalid_argument_naming_the_field_after_authentication(
    world: World, stub: ControlPlaneStub
) -> None:
    tenant = world.tenants["a"]
    item = pb.NewContent(kind=pb.CONTENT_KIND_GENERATED, media_type="image/png", data=b"x", prompt="a\x00b")
    cases = [
        (stub.CreateApiKey, pb.CreateApiKeyRequest(name="\x00", scopes=[pb.SCOPE_READ]), "name"),
        (stub.GrantCredits, pb.GrantCreditsRequest(account_id=tenant.rich, amount=1, reason="a\x00"), "reason"),
        (stub.StoreContent, pb.StoreContentRequest(account_id=tenant.rich, items=[item]), "items[0].prompt"),
    ]
    for call, request, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=tenant.admin.metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == f"{field}: must not contain NUL (U+0000) characters"
        with pytest.raises(grpc.RpcError) as anonymous:
            call(request)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
