"""The one error type the gateway turns into a gRPC status."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "atelier.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""Trailing metadata key of a serialized `google.rpc.Status` (gRPC's rich error model)."""


class RequestError(Exception):
    """A request failed in a way the caller can act on.

    Attributes:
        code: gRPC status code to answer with.
        message: One line for the caller; never internal details.
        details: Serialized `google.rpc.Status` to send as `grpc-status-details-bin`
            (rich error details such as ErrorInfo), when a dependency supplied one.
    """

    def __init__(self, code: grpc.StatusCode, message: str, details: bytes | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @classmethod
    def retry_later(cls, code: grpc.StatusCode, message: str, reason: str, retry_after_s: int) -> RequestError:
        """An error the caller should retry: ErrorInfo `reason` and a RetryInfo of `retry_after_s`."""
        return cls._with_details(
            code,
            message,
            error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN),
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_s)),
        )

    @classmethod
    def invalid_argument(cls, field: str, description: str) -> RequestError:
        """INVALID_ARGUMENT "`field`: `description`", with a `google.rpc.BadRequest` naming the field."""
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
        return cls._with_details(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field}: {description}",
            error_details_pb2.BadRequest(field_violations=[violation]),
        )

    @classmethod
    def _with_details(cls, code: grpc.StatusCode, message: str, *details: Message) -> RequestError:
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        status = status_pb2.Status(code=code.value[0], message=message, details=packed)
        return cls(code, message, status.SerializeToString())

    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        """The `google.rpc.ErrorInfo` among the rich details, if a dependency sent one."""
        if self.details is None:
            return None
        status = status_pb2.Status.FromString(self.details)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
        return None

    def __reduce__(self) -> tuple[type[RequestError], tuple[grpc.StatusCode, str, bytes | None]]:
        # Ray pickles exceptions raised in a replica; the default reduce would lose the code.
        return (RequestError, (self.code, self.message, self.details))
