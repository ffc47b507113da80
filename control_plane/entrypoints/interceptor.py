"""The one server interceptor: request ids, domain errors to status codes, RPC metrics.

- Each call gets a request id (the caller's `x-request-id` when it sends a sane one),
  sent back as trailing metadata, on success and on error, and available to the servicer
  through `current_request_id()` for audit rows and logs. Trailing, not initial: gRPC sends
  trailers with the reply's status in one operation, where initial metadata sent by hand is an
  operation of its own, on every call: with trailers, `benchmarks/credits.py`'s pairs of empty
  calls through this interceptor rose by 5–15%.
- `DomainError` subclasses become their status code with the error's message; errors with a
  `reason` also carry a `google.rpc.ErrorInfo` in the rich status details (grpcio-status),
  `Unavailable` a `google.rpc.RetryInfo`, and `InvalidArgument` a `google.rpc.BadRequest`
  naming the field.
- Request bytes that are not a valid message become INVALID_ARGUMENT (gRPC itself would
  answer INTERNAL "Exception deserializing request!" and log a traceback).
- A request whose strings hold NUL (U+0000), which PostgreSQL text cannot store, is noted here
  and refused as INVALID_ARGUMENT by `_auth.authorized` once the caller is authenticated
  (`reject_unstorable_text`).
- Anything else becomes INTERNAL "internal error (request id X)"; the traceback goes to the
  log, never to the caller.
- Every unary call is timed into `atelier_control_plane_rpc_duration_seconds{method,code}`; a refused one
  (a domain error) is counted in `atelier_control_plane_refusals_total{method,code,reason}`.
- With a per-key `RateLimiter`, every unary call of an API key takes a token before the
  servicer (and its database connection) is reached; an empty bucket is RESOURCE_EXHAUSTED
  with ErrorInfo reason RATE_LIMITED and a RetryInfo. Calls that settle admitted work may
  borrow (see `control_plane/rate_limits.py`, also for why the bucket lives here, in memory).
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry, Counter, Histogram

from control_plane import errors
from control_plane.entrypoints.bearer import bearer_secret
from control_plane.rate_limits import RateLimiter

_logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ERROR_DOMAIN = "atelier.v1"

# Calls that finish work already admitted (and paid for): refusing them would waste a finished
# generation or keep its credits held until expiry, so they may borrow from the per-key bucket.
_SETTLING_METHODS = frozenset(
    {"atelier.v1.ControlPlane/CommitReservation", "atelier.v1.ControlPlane/ReleaseReservation"}
)
_STORE_CONTENT = "atelier.v1.ControlPlane/StoreContent"

_UNDECODABLE = object()
"""Stands in for a request whose bytes did not decode, so the handler can refuse it."""

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("atelier_request_id", default=None)
_nul_field: contextvars.ContextVar[str | None] = contextvars.ContextVar("atelier_nul_field", default=None)

_STATUS_OF_ERROR: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.InsufficientCredits: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.TooManyConcurrentRequests: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    # gRPC's own definition: "perhaps the entire file system is out of space"; the ErrorInfo
    # reason BLOB_STORE_FULL tells it from a caller's quota.
    errors.StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def current_request_id() -> str | None:
    """The request id of the RPC the calling thread is serving; None outside an RPC."""
    return _request_id.get()


def reject_unstorable_text() -> None:
    """Refuses the RPC being served when one of its strings holds NUL (U+0000).

    PostgreSQL text cannot store it, so the write would fail as an internal error. Called
    after authentication, so an unauthenticated caller learns nothing about its request.

    Raises:
        InvalidArgument: Naming the first such field, e.g. `items[0].prompt`.
    """
    field = _nul_field.get()
    if field is not None:
        raise errors.InvalidArgument(field, "must not contain NUL (U+0000) characters")


def status_code_of(error: errors.DomainError) -> grpc.StatusCode:
    """The status code a domain error maps to (its nearest mapped base class)."""
    for klass in type(error).__mro__:
        if klass in _STATUS_OF_ERROR:
            return _STATUS_OF_ERROR[klass]
    return grpc.StatusCode.INTERNAL


class ControlPlaneInterceptor(grpc.ServerInterceptor):
    """Wraps every unary-unary handler; streaming handlers pass through untouched."""

    def __init__(self, registry: CollectorRegistry, key_limiter: RateLimiter | None = None) -> None:
        """Registers the RPC duration histogram and the refusal counter in `registry`.

        Args:
            registry: Where the RPC metrics go.
            key_limiter: Token buckets per API key; None lets every call through.
        """
        self._key_limiter = key_limiter
        self._duration = Histogram(
            "atelier_control_plane_rpc_duration_seconds",
            "Time to serve a control-plane RPC, by method and status code.",
            labelnames=("method", "code"),
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self._refusals = Counter(
            "atelier_control_plane_refusals",
            "Control-plane RPCs refused with a domain error, by method, gRPC status code and ErrorInfo reason "
            "(common.proto's ErrorReason without its prefix; empty when the error carries none).",
            labelnames=("method", "code", "reason"),
            registry=registry,
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """See `grpc.ServerInterceptor.intercept_service`."""
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.lstrip("/")
        metadata = handler_call_details.invocation_metadata or ()
        behavior = handler.unary_unary

        def serve(request: Any, context: grpc.ServicerContext) -> Any:
            return self._serve(behavior, method, metadata, request, context)

        return grpc.unary_unary_rpc_method_handler(
            serve,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _serve(
        self,
        behavior: Callable[[Any, grpc.ServicerContext], Any],
        method: str,
        metadata: Any,
        request: Any,
        context: grpc.ServicerContext,
    ) -> Any:
        request_id = _request_id_from(metadata)
        token = _request_id.set(request_id)
        nul_token = _nul_field.set(_first_nul_field(request))
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            if request is _UNDECODABLE:
                raise errors.InvalidArgument(
                    "request", "is not a valid protobuf message of this method; send the message its .proto declares"
                )
            if self._key_limiter is not None and (secret := _bearer_secret(metadata)) is not None:
                digest = hashlib.sha256(secret.encode()).digest()
                self._key_limiter.take(digest, borrow=_settles(method, request))
            return behavior(request, context)
        except errors.DomainError as error:
            code = status_code_of(error)
            _logger.info(
                "rpc refused method=%s code=%s request_id=%s reason=%s message=%r",
                method,
                code.name,
                request_id,
                error.reason or "",
                error.message,
            )
            self._refusals.labels(method=method, code=code.name, reason=error.reason or "").inc()
            _abort(context, code, error, request_id)
        except Exception:
            aborted_code = context.code()
            if aborted_code not in (None, grpc.StatusCode.OK):
                # The handler called context.abort itself: let gRPC finish that abort.
                code = aborted_code
                raise
            code = grpc.StatusCode.INTERNAL
            _logger.exception("rpc failed method=%s request_id=%s", method, request_id)
            context.abort(code, f"internal error (request id {request_id})")
        finally:
            self._duration.labels(method=method, code=code.name).observe(time.perf_counter() - started)
            _request_id.reset(token)
            _nul_field.reset(nul_token)


def _first_nul_field(message: Any) -> str | None:
    """The path of the first string field of `message` (nested ones too) that holds NUL."""
    if not isinstance(message, Message):
        return None
    # Runs on every RPC: paths are only formatted for the field that holds NUL.
    for field, value in message.ListFields():
        if field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
            continue
        values = value if field.is_repeated else (value,)
        for index, item in enumerate(values):
            if field.type == FieldDescriptor.TYPE_STRING:
                if "\x00" in item:
                    return _field_path(field.name, index if field.is_repeated else None)
            elif (found := _first_nul_field(item)) is not None:
                return f"{_field_path(field.name, index if field.is_repeated else None)}.{found}"
    return None


def _field_path(name: str, index: int | None) -> str:
    return name if index is None else f"{name}[{index}]"


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering `_UNDECODABLE` instead of raising on corrupt bytes."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _UNDECODABLE

    return deserialize


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, error: errors.DomainError, request_id: str) -> None:
    details: list[any_pb2.Any] = []
    if error.reason is not None:
        info = error_details_pb2.ErrorInfo(reason=error.reason, domain=_ERROR_DOMAIN, metadata=dict(error.metadata))
        details.append(_packed(info))
    if isinstance(error, errors.InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.description)
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(error, errors.Unavailable):
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1))
        details.append(_packed(retry))
    if isinstance(error, errors.RetryLater):
        delay = duration_pb2.Duration()
        # Rounded up to the millisecond, so a caller that waits exactly this long finds a token.
        delay.FromMilliseconds(max(1, math.ceil(error.retry_after_s * 1000)))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    if not details:
        context.abort(code, error.message)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message, details=details)
    rich = rpc_status.to_status(status)
    # abort_with_status replaces the trailers: the request id goes beside the status details.
    context.abort_with_status(
        rich._replace(trailing_metadata=(*rich.trailing_metadata, (REQUEST_ID_HEADER, request_id)))
    )


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _settles(method: str, request: Any) -> bool:
    if method in _SETTLING_METHODS:
        return True
    return method == _STORE_CONTENT and bool(getattr(request, "commit_reservation_id", ""))


def _bearer_secret(metadata: Any) -> str | None:
    # The servicer authenticates; here a missing or malformed key only means "no bucket".
    try:
        return bearer_secret(metadata)
    except errors.Unauthenticated:
        return None


def _request_id_from(metadata: Any) -> str:
    for key, value in metadata:
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _SANE_REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex
