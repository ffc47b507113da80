"""Direct ingress: the Gateway replica's own gRPC server runs the same servicer hook as Serve's proxy, and its
handlers see the caller's deadline (from the real gRPC context, never from the caller's metadata) and the
direct mark; the proxy's handlers are left as they were (the proxy patch stamps there)."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from unittest.mock import Mock

import grpc
import pytest
from ray.serve._private.proxy_request_response import gRPCStreamingType

from inference.deadline import DEADLINE_METADATA, came_directly, deadline_of, stamp_deadline
from inference.grpc_proxy import add_inference_servicer_to_server
from protos.atelier.v1 import inference_pb2


class FakeServer:
    """Builds handlers the way Serve's gRPCGenericServer does; records the context each handler got."""

    def __init__(self, direct: bool) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.seen: list[Any] = []
        factory = self._direct_ingress_service_handler_factory if direct else self._proxy_factory
        self.service_handler_factory = factory

    def _factory(self, service_method: str, streaming_type: gRPCStreamingType) -> Any:
        async def unary_unary(request: Any, context: Any) -> bytes:
            self.seen.append(context)
            return b""

        async def unary_stream(request: Any, context: Any) -> Any:
            self.seen.append(context)
            yield b""

        return unary_unary if streaming_type == gRPCStreamingType.UNARY_UNARY else unary_stream

    # The names Serve's replica and proxy give their factories (the hook tells them apart by it).
    def _direct_ingress_service_handler_factory(self, service_method: str, streaming_type: gRPCStreamingType) -> Any:
        return self._factory(service_method, streaming_type)

    def _proxy_factory(self, service_method: str, streaming_type: gRPCStreamingType) -> Any:
        return self._factory(service_method, streaming_type)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        for handler in generic_rpc_handlers:
            for name, method in handler._method_handlers.items():
                self.handlers[name] = method._replace(
                    unary_unary=self.service_handler_factory(
                        service_method=name, streaming_type=gRPCStreamingType.UNARY_UNARY
                    ),
                    unary_stream=self.service_handler_factory(
                        service_method=name, streaming_type=gRPCStreamingType.UNARY_STREAM
                    ),
                )

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        pass


class RealContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...], time_remaining: float | None) -> None:
        self._metadata = metadata
        self._time_remaining = time_remaining
        self.trailers: Any = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return self._time_remaining

    def set_trailing_metadata(self, trailers: Any) -> None:
        self.trailers = trailers


def _call(server: FakeServer, method: str, context: RealContext) -> Any:
    handler = server.handlers[f"/atelier.v1.Inference/{method}"]
    request = inference_pb2.GenerateRequest(prompt="a fox")

    async def run() -> None:
        if method == "Generate":
            await handler.unary_unary(request, context)
        else:
            async for _ in handler.unary_stream(request, context):
                pass

    asyncio.run(run())
    return server.seen[-1]


FORGED = (("authorization", "Bearer k"), (DEADLINE_METADATA, "1.0"), ("x-atelier-ingress", "direct"))


@pytest.mark.parametrize("method", ["Generate", "GenerateStream"])
def test_direct_handlers_see_the_real_deadline_and_the_mark_not_the_callers(method: str) -> None:
    server = FakeServer(direct=True)
    add_inference_servicer_to_server(Mock(), server)  # Serve registers with a Mock servicer too
    real = RealContext(FORGED, time_remaining=30.0)
    before = time.time()
    seen = _call(server, method, real)
    metadata = seen.invocation_metadata()
    deadline = deadline_of(metadata)
    assert deadline is not None and before + 29 < deadline < time.time() + 31
    assert came_directly(metadata)
    assert [key for key, _ in metadata] == ["authorization", DEADLINE_METADATA, "x-atelier-ingress"]
    # Everything else is the real context's.
    seen.set_trailing_metadata((("request_id", "r"),))
    assert real.trailers == (("request_id", "r"),)


def test_a_direct_call_without_deadline_has_none() -> None:
    server = FakeServer(direct=True)
    add_inference_servicer_to_server(Mock(), server)
    metadata = _call(server, "Generate", RealContext(FORGED, time_remaining=None)).invocation_metadata()
    assert deadline_of(metadata) is None and came_directly(metadata)


def test_proxy_handlers_get_the_real_context_untouched() -> None:
    server = FakeServer(direct=False)
    add_inference_servicer_to_server(Mock(), server)
    real = RealContext(FORGED, time_remaining=30.0)
    assert _call(server, "Generate", real) is real


def test_the_proxy_stamp_drops_a_forged_mark() -> None:
    stamped = stamp_deadline(FORGED, None, time.time())
    assert not came_directly(stamped) and deadline_of(stamped) is None
