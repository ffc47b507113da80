"""The gRPC proxy fixes: a stream the caller abandons while the proxy waits at `yield` cancels the
replica's request (Ray 2.60 swallows the GeneratorExit there and never cancels it); the caller's
deadline reaches the gateway; a failed stream keeps its rich error details."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
import pytest
from ray.exceptions import RayTaskError
from ray.serve._private.proxy import gRPCProxy
from ray.serve.exceptions import gRPCStatusError
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentResponseGenerator

from inference.deadline import deadline_of
from inference.errors import STATUS_DETAILS_KEY, RequestError
from inference.grpc_proxy import patch_grpc_proxy_stream_cancellation


class FakeReplicaStream(DeploymentResponseGenerator):
    """Stands for the replica's streaming response: endless messages, and records cancel()."""

    def __init__(self) -> None:  # Serve's constructor needs a running router; none is needed here
        self.cancel_calls = 0

    def __aiter__(self) -> FakeReplicaStream:
        return self

    async def __anext__(self) -> tuple[Any, bytes]:
        await asyncio.sleep(0)
        return _FakeGrpcContext(), b"progress"

    def cancel(self) -> None:
        self.cancel_calls += 1

    def cancelled(self) -> bool:
        return self.cancel_calls > 0


class _FakeGrpcContext:
    def _set_on_grpc_context(self, context: Any) -> None:
        pass


class _FakeHandle:
    def __init__(self, stream: FakeReplicaStream) -> None:
        self.stream = stream

    def remote(self, argument: Any) -> FakeReplicaStream:
        return self.stream


class _FakeProxyRequest:
    has_input_stream = False
    context = None

    def serialized_replica_arg(self) -> bytes:
        return b""


def _proxy() -> Any:
    proxy = object.__new__(gRPCProxy)  # only the attributes send_request_to_replica reads
    proxy.request_timeout_s = None
    proxy._setup_grpc_tracing = lambda *args: None
    proxy._finalize_grpc_tracing = lambda *args: None
    return proxy


async def _abandon_at_yield(send_request_to_replica: Any) -> FakeReplicaStream:
    stream = FakeReplicaStream()
    generator = send_request_to_replica(_proxy(), "request", "internal", _FakeHandle(stream), _FakeProxyRequest())
    assert await generator.__anext__() == b"progress"  # the proxy now waits at `yield result`
    # What the gRPC server does when the caller cancels there. Ray's own version raises
    # "async generator ignored GeneratorExit".
    with contextlib.suppress(RuntimeError):
        await generator.aclose()
    return stream


def test_abandoned_stream_cancels_the_replica_request() -> None:
    assert patch_grpc_proxy_stream_cancellation()
    stream = asyncio.run(_abandon_at_yield(gRPCProxy.send_request_to_replica))
    assert stream.cancel_calls == 1


def test_ray_without_the_patch_loses_the_cancel() -> None:
    """Documents the upstream bug: when this fails, Ray fixed it and the patch can go."""
    patch_grpc_proxy_stream_cancellation()
    original = getattr(gRPCProxy.send_request_to_replica, "__wrapped__", None)
    if original is None:
        pytest.skip("the patch is not applied on this Ray version")
    stream = asyncio.run(_abandon_at_yield(original))
    assert stream.cancel_calls == 0


def test_patch_is_idempotent() -> None:
    assert patch_grpc_proxy_stream_cancellation()
    patched = gRPCProxy.send_request_to_replica
    assert patch_grpc_proxy_stream_cancellation()
    assert gRPCProxy.send_request_to_replica is patched


class _CallerContext:
    """The caller's side of Serve's proxy: the grpc.aio servicer context, as far as the patch reads it."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], time_remaining: float | None) -> None:
        self._metadata = metadata
        self._time_remaining = time_remaining
        self.trailing: tuple[tuple[str, Any], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return self._time_remaining

    def set_trailing_metadata(self, metadata: tuple[tuple[str, Any], ...]) -> None:
        self.trailing = metadata

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self.trailing

    def auth_context(self) -> dict[str, Any]:
        return {}

    def code(self) -> None:
        return None

    def details(self) -> None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None


class _ServedProxyRequest(_FakeProxyRequest):
    def __init__(self, context: _CallerContext) -> None:
        self.context = context
        self.ray_serve_grpc_context = RayServegRPCContext(context)  # Serve's own, as the gateway gets it


class _RecordingHandle:
    """Records what the gateway's context says when the request leaves the proxy, and answers `reply`."""

    def __init__(self, proxy_request: _ServedProxyRequest, reply: Any) -> None:
        self._proxy_request = proxy_request
        self._reply = reply
        self.metadata_sent: list[tuple[str, str]] = []

    def remote(self, argument: Any) -> Any:
        self.metadata_sent = list(self._proxy_request.ray_serve_grpc_context.invocation_metadata())
        return self._reply


class _FailingReplicaStream(FakeReplicaStream):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self._error = error

    async def __anext__(self) -> tuple[Any, bytes]:
        raise self._error


async def _drain(generator: Any) -> list[Any]:
    return [message async for message in generator]


def test_the_callers_deadline_reaches_the_gateway_and_a_forged_one_does_not() -> None:
    assert patch_grpc_proxy_stream_cancellation()
    forged = str(time.time() + 3600)
    proxy_request = _ServedProxyRequest(_CallerContext((("x-atelier-deadline", forged), ("a", "b")), 2.5))
    handle = _RecordingHandle(proxy_request, FakeReplicaStream())
    before = time.time()

    async def first_message() -> Any:
        generator = gRPCProxy.send_request_to_replica(_proxy(), "request", "internal", handle, proxy_request)
        message = await generator.__anext__()
        await generator.aclose()
        return message

    assert asyncio.run(first_message()) == b"progress"
    deadline = deadline_of(handle.metadata_sent)
    assert deadline is not None and before + 2.5 <= deadline <= time.time() + 2.5
    assert [key for key, _ in handle.metadata_sent].count("x-atelier-deadline") == 1
    assert ("a", "b") in handle.metadata_sent


def test_a_call_without_deadline_reaches_the_gateway_without_one() -> None:
    assert patch_grpc_proxy_stream_cancellation()
    proxy_request = _ServedProxyRequest(_CallerContext((("x-atelier-deadline", "123"),), None))
    handle = _RecordingHandle(proxy_request, FakeReplicaStream())

    async def first_message() -> None:
        generator = gRPCProxy.send_request_to_replica(_proxy(), "request", "internal", handle, proxy_request)
        await generator.__anext__()
        await generator.aclose()

    asyncio.run(first_message())
    assert deadline_of(handle.metadata_sent) is None


def test_a_failed_stream_keeps_the_gateways_rich_error_details() -> None:
    """What Ray hands the proxy when the gateway's GenerateStream raises its RequestError after setting
    the code: a RayTaskError that is also Serve's gRPCStatusError around the RequestError."""
    assert patch_grpc_proxy_stream_cancellation()
    refused = RequestError.retry_later(grpc.StatusCode.UNAVAILABLE, "model at capacity", "POOL_AT_CAPACITY", 1)
    wrapped = gRPCStatusError(original_exception=refused, code=refused.code, details=refused.message)
    error = RayTaskError("GenerateStream", "Traceback: ...", wrapped).as_instanceof_cause()
    caller = _CallerContext((), 30.0)
    proxy_request = _ServedProxyRequest(caller)
    handle = _RecordingHandle(proxy_request, _FailingReplicaStream(error))

    messages = asyncio.run(
        _drain(gRPCProxy.send_request_to_replica(_proxy(), "request-7", "internal", handle, proxy_request))
    )

    status = messages[-1]
    assert (status.code, status.message) == (grpc.StatusCode.UNAVAILABLE, "model at capacity")
    trailing = dict(caller.trailing)
    assert trailing["request_id"] == "request-7"
    assert trailing[STATUS_DETAILS_KEY] == refused.details
    info = RequestError(status.code, status.message, trailing[STATUS_DETAILS_KEY]).error_info()
    assert info is not None and info.reason == "POOL_AT_CAPACITY"


def test_an_unexpected_stream_failure_sends_no_details() -> None:
    assert patch_grpc_proxy_stream_cancellation()
    caller = _CallerContext((), 30.0)
    proxy_request = _ServedProxyRequest(caller)
    handle = _RecordingHandle(proxy_request, _FailingReplicaStream(RuntimeError("boom")))

    messages = asyncio.run(
        _drain(gRPCProxy.send_request_to_replica(_proxy(), "request", "internal", handle, proxy_request))
    )

    assert messages[-1].code == grpc.StatusCode.INTERNAL
    assert caller.trailing == ()
