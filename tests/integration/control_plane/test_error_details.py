"""Refusals as another team's client reads them: BadRequest naming the field, no internal call named."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._support import Caller, bearer


def _field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no rich status details"
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            violations += [(v.field, v.description) for v in request.field_violations]
    return violations


def test_invalid_argument_carries_a_bad_request_naming_the_field(stub: ControlPlaneStub, operator: Caller) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateAccount(pb.CreateAccountRequest(birth_date="17/05/1990"), metadata=bearer(operator.secret))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    [(field, description)] = _field_violations(refused.value)
    assert field == "birth_date" and refused.value.details() == f"birth_date: {description}"  # type: ignore[attr-defined]


def test_a_missing_scope_names_no_internal_call(stub: ControlPlaneStub, make_key: Callable[..., str]) -> None:
    reader = make_key(pb.SCOPE_READ)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ReserveCredits(
            pb.ReserveCreditsRequest(account_id="00000000-0000-4000-8000-000000000000", amount=1),
            metadata=bearer(reader),
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    details = refused.value.details()  # type: ignore[attr-defined]
    assert "'generate' scope" in details and "ReserveCredits" not in details
