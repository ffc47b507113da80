"""The gRPC proxy fix: a stream the caller abandons while the proxy waits at `yield` cancels the
replica's request (Ray 2.60 swallows the GeneratorExit there and never cancels it)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from ray.serve._private.proxy import gRPCProxy
from ray.serve.handle import DeploymentResponseGenerator

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
