"""Both gRPC ports answer the standard health and reflection services, as grpc_health_probe and grpcurl expect."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


@pytest.fixture(params=["control_plane", "inference"])
def port(request, cluster) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    if request.param == "control_plane":
        return cluster.control_plane_address, "atelier.v1.ControlPlane"
    return cluster.serve_grpc_address, "atelier.v1.Inference"


def test_health_check_answers_serving(port: tuple[str, str]) -> None:
    address, service = port
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", service):
            response = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(port: tuple[str, str]) -> None:
    address, service = port
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert service in set(database.get_services())
        descriptor = database.FindFileContainingSymbol(service)
        assert descriptor.package == "atelier.v1"
