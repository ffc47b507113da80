"""Serve's proxy refuses request bytes that are not a valid message with INVALID_ARGUMENT.

grpc's asyncio server answers a deserializer's exception with UNKNOWN "Unexpected <class
'DecodeError'>: ..."; `add_inference_servicer_to_server` gives the proxy tolerant deserializers
and handlers that abort cleanly instead (found by tests/e2e/test_inference_fuzz.py).
"""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import Mock

import grpc
import pytest
from ray.serve._private.proxy_request_response import gRPCStreamingType

from inference.grpc_proxy import UNDECODABLE_DETAILS, add_inference_servicer_to_server
from protos.atelier.v1 import inference_pb2


class FakeProxyServer:
    """Records handlers the way Serve's gRPCGenericServer builds them, with its handler factory."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service_handler_factory(self, service_method: str, streaming_type: gRPCStreamingType) -> Any:
        async def unary_unary(request: Any, context: Any) -> bytes:
            return request.SerializeToString()

        async def unary_stream(request: Any, context: Any) -> Any:
            yield request.SerializeToString()

        return unary_unary if streaming_type == gRPCStreamingType.UNARY_UNARY else unary_stream

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        for handler in generic_rpc_handlers:
            for name, method in handler._method_handlers.items():
                self.handlers[name] = method._replace(
                    unary_unary=self.service_handler_factory(name, gRPCStreamingType.UNARY_UNARY),
                    unary_stream=self.service_handler_factory(name, gRPCStreamingType.UNARY_STREAM),
                )

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        pass


class AbortingContext:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(code, details)


@pytest.mark.parametrize("method", ["Generate", "GenerateStream"])
def test_undecodable_bytes_are_aborted_as_invalid_argument_and_valid_ones_pass(method: str) -> None:
    server = FakeProxyServer()
    add_inference_servicer_to_server(Mock(), server)  # Serve registers with a Mock servicer too
    handler = server.handlers[f"/atelier.v1.Inference/{method}"]
    behavior = handler.unary_unary if method == "Generate" else handler.unary_stream

    async def run(data: bytes) -> Any:
        request = handler.request_deserializer(data)
        if method == "Generate":
            return await behavior(request, AbortingContext())
        return [message async for message in behavior(request, AbortingContext())]

    with pytest.raises(RuntimeError) as aborted:
        asyncio.run(run(b"\x0a\x05ab"))
    assert aborted.value.args == (grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_DETAILS)
    valid = inference_pb2.GenerateRequest(prompt="a kite").SerializeToString()
    answered = asyncio.run(run(valid))
    assert answered == (valid if method == "Generate" else [valid])
