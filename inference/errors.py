"""The one error type the gateway turns into a gRPC status."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


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
