"""Servicer hooks for Serve's gRPC proxy: TLS on its port, and a fix for streams the caller abandons.

Ray Serve 2.60's gRPC proxy loses cancellations of server-streaming calls: when the caller cancels
while the proxy is suspended at ``yield result`` in `gRPCProxy.send_request_to_replica`, the
``GeneratorExit`` that closes the generator is caught by its ``except BaseException`` and turned into a
status, and the replica's request is never cancelled. The Gateway then keeps streaming into the void,
its DiffusionModel keeps denoising, and the request can even be charged.

`add_inference_servicer_to_server` is what `inference.app` lists in ``grpc_servicer_functions``: Serve
imports and calls it inside every proxy process while building the proxy's server, before any request,
so it is where the fix is applied. The fix replaces `send_request_to_replica` by a copy of Ray's that
cancels the replica's response when the generator is closed or cancelled (the change upstream would
make), and is applied only to the Ray version whose source it was checked against.

TLS: Ray 2.60's `start_grpc_server` binds the proxy's port with
`ray.serve._private.default_impl.add_grpc_address` (always `add_insecure_port`) *before* it calls the
servicer functions, so the servicer hook is too late to choose the port's credentials. Serve calls one
earlier hook in every proxy process: the callback named by `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`,
in `ProxyActor.__init__`, before the gRPC server task runs. `install_proxy_tls` is that callback (it
adds no HTTP middleware): when `ATELIER_TLS_CERT_FILE` is set it replaces `add_grpc_address` by one that
binds a TLS port (mutual TLS with `ATELIER_TLS_CLIENT_CA_FILE`). The launcher and the chart set the
variable on the Ray nodes; if TLS is configured but the callback did not run, the servicer hook refuses
to serve (the proxy fails to start) rather than serve plaintext.

The patched `send_request_to_replica` also carries the caller's deadline to the gateway (Serve's
context for the replica keeps the caller's metadata but not its deadline; see `inference.deadline`),
and keeps a failed stream's rich error: Serve's proxy sends the trailing metadata the replica set only
with a message, so a stream that fails before its result (the gateway raises its `RequestError`)
would lose its `grpc-status-details-bin` (ErrorInfo, RetryInfo, BadRequest) and request id. The
patch finds the `RequestError` in the exception Ray hands back and puts both on the caller's context.

Direct ingress (`ATELIER_DIRECT_INGRESS`): Serve runs the same servicer functions in the Gateway
replica to build its own gRPC server, and the replica's handler factory is wrapped the same way. No
proxy is on that path, so the wrapped handlers stamp the caller's deadline themselves (the replica
builds its `RayServegRPCContext` from the real context's metadata, never its deadline) and mark the
call as direct (`inference.deadline.INGRESS_METADATA`): a client-sent deadline or mark is dropped. The
stream-cancellation patch is not needed there (a cancelled call cancels the handler), and server TLS
is refused with direct ingress by the launcher's settings.

The hook also makes request bytes that are not a valid message an INVALID_ARGUMENT: the proxy decodes
requests with the generated deserializers, and grpc's asyncio server answers a deserializer's
exception with UNKNOWN "Unexpected <class 'DecodeError'>: ..." (found by tests/e2e/test_inference_fuzz.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import ray
from google.protobuf.message import DecodeError

from inference.deadline import stamp_deadline
from inference.errors import STATUS_DETAILS_KEY, RequestError
from protos.atelier.v1.inference_pb2_grpc import add_InferenceServicer_to_server
from transport.tls import TlsConfig

logger = logging.getLogger(__name__)

# The Ray releases whose `gRPCProxy.send_request_to_replica` the patched copy below mirrors.
_PATCHED_RAY_SERIES = "2.60."
_PATCH_MARKER = "_atelier_cancels_abandoned_streams"
_TLS_MARKER = "_atelier_binds_with_tls"

PROXY_CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
"""Serve's variable naming a function it calls in every proxy process at start-up."""
PROXY_CALLBACK = "inference.grpc_proxy.install_proxy_tls"
"""Its value on atelier's Ray nodes (set by `atelier up` and the chart)."""


_UNDECODABLE = object()
"""What a tolerant deserializer returns for bytes that are not a valid request message."""
UNDECODABLE_DETAILS = "request: is not a valid protobuf message of this method; send the message its .proto declares"


def add_inference_servicer_to_server(servicer: Any, server: Any) -> None:
    """Registers `atelier.v1.Inference` on Serve's proxy server, first fixing stream cancellation.

    Raises:
        RuntimeError: TLS is configured but the proxy's port was bound without it (the
            start-up callback is not installed); the proxy then fails instead of serving plaintext.
    """
    if TlsConfig.from_env().server_enabled and not proxy_binds_with_tls():
        raise RuntimeError(
            f"ATELIER_TLS_CERT_FILE is set but Serve's gRPC proxy bound its port without TLS: "
            f"set {PROXY_CALLBACK_VARIABLE}={PROXY_CALLBACK} in the Ray nodes' environment"
        )
    patch_grpc_proxy_stream_cancellation()
    add_InferenceServicer_to_server(servicer, _RefusingUndecodable(server))


class _RefusingUndecodable:
    """Stands in for Serve's proxy server while the generated code registers Inference's handlers.

    Gives every handler a deserializer that returns `_UNDECODABLE` instead of raising, and wraps the
    proxy's handlers (built by its `service_handler_factory`) so they abort with INVALID_ARGUMENT
    when they receive it. Everything else is Serve's server, untouched.
    """

    def __init__(self, server: Any) -> None:
        self._server = server
        factory = getattr(server, "service_handler_factory", None)
        if factory is not None:
            server.service_handler_factory = _refusing_factory(factory)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        for handler in generic_rpc_handlers:
            methods = getattr(handler, "_method_handlers", None)
            if isinstance(methods, dict):
                handler._method_handlers = {name: _tolerant(h) for name, h in methods.items()}
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        tolerant = {name: _tolerant(handler) for name, handler in method_handlers.items()}
        self._server.add_registered_method_handlers(service_name, tolerant)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def _tolerant(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    decode = handler.request_deserializer
    if decode is None:
        return handler

    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError:
            return _UNDECODABLE

    return handler._replace(request_deserializer=deserialize)


def _refusing_factory(factory: Any) -> Any:
    """Wraps Serve's handler factory (the proxy's, or an ingress replica's with direct ingress) so its
    unary and server-streaming handlers refuse `_UNDECODABLE`; in a replica they also stamp the deadline."""
    direct = _is_direct_ingress_factory(factory)

    def make(service_method: str, streaming_type: Any) -> Any:
        handler = factory(service_method=service_method, streaming_type=streaming_type)
        if getattr(streaming_type, "name", "") == "UNARY_UNARY":

            async def unary_unary(request: Any, context: Any) -> Any:
                if request is _UNDECODABLE:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_DETAILS)
                return await handler(request, _DirectContext(context) if direct else context)

            return unary_unary
        if getattr(streaming_type, "name", "") == "UNARY_STREAM":

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                if request is _UNDECODABLE:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_DETAILS)
                async for message in handler(request, _DirectContext(context) if direct else context):
                    yield message

            return unary_stream
        return handler

    return make


def _is_direct_ingress_factory(factory: Any) -> bool:
    """Whether `factory` builds the handlers of an ingress replica's own server (direct ingress),
    not those of Serve's proxy."""
    return getattr(factory, "__name__", "") == "_direct_ingress_service_handler_factory"


class _DirectContext:
    """The real gRPC context of a direct-ingress call, whose invocation metadata carries the caller's
    deadline and the direct mark (`inference.deadline.stamp_deadline`) instead of any the caller sent.

    Serve's replica builds the gateway's `RayServegRPCContext` from it; everything else (codes,
    trailers, peer, abort) is the real context's.
    """

    def __init__(self, context: Any) -> None:
        self._context = context
        self._metadata = tuple(
            stamp_deadline(context.invocation_metadata() or (), context.time_remaining(), time.time(), direct=True)
        )

    def invocation_metadata(self) -> tuple[Any, ...]:
        return self._metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def install_proxy_tls() -> list[Any]:
    """Serve's proxy start-up callback: binds the gRPC proxy's port with TLS when configured.

    Reads `ATELIER_TLS_*` in the proxy process (the Ray node's environment, where the chart
    mounts the certificates). Returns no HTTP middlewares.

    Raises:
        transport.tls.TlsConfigError: A TLS file is missing or wrong; the proxy does not start
            and Serve reports this message.
    """
    tls = TlsConfig.from_env()
    if tls.server_enabled:
        bind_grpc_proxy_with_tls(tls)
    return []


def bind_grpc_proxy_with_tls(tls: TlsConfig) -> None:
    """Makes Serve's `add_grpc_address` bind proxy ports with `tls`'s server credentials. Idempotent."""
    from ray.serve._private import default_impl

    def add_grpc_address(grpc_server: Any, server_address: str) -> None:
        tls.add_port(grpc_server, server_address)

    setattr(add_grpc_address, _TLS_MARKER, True)
    default_impl.add_grpc_address = add_grpc_address
    logger.info("grpc_proxy_tls mutual=%s", tls.mutual)


def proxy_binds_with_tls() -> bool:
    """Whether `bind_grpc_proxy_with_tls` is in effect in this process."""
    from ray.serve._private import default_impl

    return bool(getattr(default_impl.add_grpc_address, _TLS_MARKER, False))


def patch_grpc_proxy_stream_cancellation() -> bool:
    """Makes the gRPC proxy cancel the replica's request when the caller abandons a stream.

    Idempotent. Returns whether the patch is in place; on another Ray version it logs a warning and
    leaves the proxy as it is (the gateway still releases credits when the replica call fails).
    """
    from ray.serve._private import proxy as proxy_module

    proxy_class = proxy_module.gRPCProxy
    if getattr(proxy_class.send_request_to_replica, _PATCH_MARKER, False):
        return True
    if not ray.__version__.startswith(_PATCHED_RAY_SERIES):
        logger.warning(
            "grpc_proxy_patch_skipped ray_version=%s expected=%sx: abandoned streams may keep running",
            ray.__version__,
            _PATCHED_RAY_SERIES,
        )
        return False
    original = proxy_class.send_request_to_replica

    async def send_request_to_replica(
        self: Any,
        request_id: str,
        internal_request_id: str,
        handle: Any,
        proxy_request: Any,
        app_is_cross_language: bool = False,
    ) -> AsyncIterator[Any]:
        if getattr(proxy_request, "has_input_stream", False):
            # Client and bidirectional streams take Ray's own path (not used by atelier).
            async for message in original(
                self, request_id, internal_request_id, handle, proxy_request, app_is_cross_language
            ):
                yield message
            return
        self._setup_grpc_tracing(request_id, handle, proxy_request)
        _carry_deadline(proxy_request)
        response_generator = proxy_module.ProxyResponseGenerator(
            handle.remote(proxy_request.serialized_replica_arg()),
            timeout_s=self.request_timeout_s,
        )
        status = None
        exc: BaseException | None = None
        try:
            async for context, result in response_generator:
                context._set_on_grpc_context(proxy_request.context)
                yield result
            status = proxy_module.ResponseStatus(code=grpc.StatusCode.OK)
        except (GeneratorExit, asyncio.CancelledError) as abandoned:
            # The fix: the caller is gone, so stop the replica's work, and let the close proceed
            # (Ray's version turns this into a status it then tries to yield from a closing generator).
            response_generator._response.cancel()
            status = proxy_module.ResponseStatus(code=grpc.StatusCode.CANCELLED, is_error=True)
            exc = abandoned
            raise
        except BaseException as error:
            status = proxy_module.get_grpc_response_status(error, self.request_timeout_s, request_id)
            if (request_error := _request_error_in(error)) is not None:
                status = proxy_module.ResponseStatus(
                    code=request_error.code, message=request_error.message, is_error=True
                )
                _send_rich_error(proxy_request.context, request_error, request_id)
            exc = error
        finally:
            self._finalize_grpc_tracing(proxy_request, status, exc)
        yield status

    setattr(send_request_to_replica, _PATCH_MARKER, True)
    send_request_to_replica.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(proxy_class, "send_request_to_replica", send_request_to_replica)  # noqa: B010 - patching a method
    logger.info("grpc_proxy_patched ray_version=%s", ray.__version__)
    return True


def _carry_deadline(proxy_request: Any) -> None:
    """Stamps the caller's deadline into the context Serve sends to the gateway (see `inference.deadline`)."""
    serve_context = getattr(proxy_request, "ray_serve_grpc_context", None)
    grpc_context = getattr(proxy_request, "context", None)
    if serve_context is None or grpc_context is None:
        return
    stamped = stamp_deadline(serve_context._invocation_metadata, grpc_context.time_remaining(), time.time())
    serve_context._invocation_metadata = stamped
    serve_context._invocation_metadata_dict = dict(stamped)


def _request_error_in(error: BaseException) -> RequestError | None:
    """The gateway's `RequestError` inside what Ray raised for a failed replica call, if any.

    Ray wraps the replica's exception (a `RayTaskError` that is also an instance of the cause's class)
    and Serve wraps one raised after the method set a code (`gRPCStatusError.original_exception`).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, RequestError):
            return current
        seen.add(id(current))
        nested = getattr(current, "original_exception", None) or getattr(current, "cause", None)
        current = nested if isinstance(nested, BaseException) else current.__cause__
    return None


def _send_rich_error(grpc_context: Any, error: RequestError, request_id: str) -> None:
    """Puts a failed stream's request id and rich details (ErrorInfo, RetryInfo, ...) in its trailers."""
    if grpc_context is None:
        return
    trailing: list[tuple[str, str | bytes]] = [("request_id", request_id)]
    if error.details is not None:
        trailing.append((STATUS_DETAILS_KEY, error.details))
    grpc_context.set_trailing_metadata(tuple(trailing))


__all__ = [
    "PROXY_CALLBACK",
    "PROXY_CALLBACK_VARIABLE",
    "UNDECODABLE_DETAILS",
    "add_inference_servicer_to_server",
    "bind_grpc_proxy_with_tls",
    "install_proxy_tls",
    "patch_grpc_proxy_stream_cancellation",
    "proxy_binds_with_tls",
]
