"""Rich error details (google.rpc) of a failed call, as a caller reads them."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def reason_and_retry_delay(error: grpc.RpcError) -> tuple[str | None, float | None]:
    """The ErrorInfo reason and RetryInfo delay (seconds) the caller received."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason, delay = None, None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToMilliseconds() / 1000
    return reason, delay


def bad_request_fields(error: grpc.RpcError) -> list[str]:
    """The fields a BadRequest in the caller's rich details names; fails when the details were lost."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error lost its grpc-status-details-bin"
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [violation.field for violation in bad_request.field_violations]
    return fields
