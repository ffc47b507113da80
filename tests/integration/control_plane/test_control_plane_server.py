"""The server around the servicer: health, reflection, request ids, metrics, and the real
`python -m control_plane serve|migrate` processes the launcher runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from control_plane.db.migrations import load_migrations
from control_plane.entrypoints.server import wait_until_serving
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration._postgres import fresh_database
from tests.integration.control_plane._support import REPO_ROOT, Caller


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("service", ["", "atelier.v1.ControlPlane"])
def test_health_check_answers_serving(channel: grpc.Channel, service: str) -> None:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_control_plane_health_and_reflection_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {service.name for service in next(iter(responses)).list_services_response.service}
    assert services == {
        "atelier.v1.ControlPlane",
        "atelier.v1.TrainingData",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_every_call_returns_a_request_id_and_keeps_a_sane_one_it_was_given(
    stub: ControlPlaneStub, operator: Caller
) -> None:
    _, call = stub.WhoAmI.with_call(pb.WhoAmIRequest(), metadata=operator.metadata)
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert len(generated) == 32
    _, call = stub.WhoAmI.with_call(pb.WhoAmIRequest(), metadata=(*operator.metadata, ("x-request-id", "abc-123")))
    assert dict(call.trailing_metadata())["x-request-id"] == "abc-123"


def test_a_refused_call_returns_its_request_id_beside_its_error_details(
    stub: ControlPlaneStub, operator: Caller
) -> None:
    request = pb.GetBalanceRequest(account_id="not-a-uuid")
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetBalance(request, metadata=(*operator.metadata, ("x-request-id", "req-7")))
    trailers = dict(caught.value.trailing_metadata() or ())
    assert trailers["x-request-id"] == "req-7"
    assert "grpc-status-details-bin" in trailers  # the BadRequest is still there


def test_rpc_durations_are_recorded_by_method_and_code(
    stub: ControlPlaneStub, operator: Caller, metrics_registry: CollectorRegistry
) -> None:
    def count(code: str) -> float:
        labels = {"method": "atelier.v1.ControlPlane/WhoAmI", "code": code}
        return metrics_registry.get_sample_value("atelier_control_plane_rpc_duration_seconds_count", labels) or 0.0

    ok_before, refused_before = count("OK"), count("UNAUTHENTICATED")
    stub.WhoAmI(pb.WhoAmIRequest(), metadata=operator.metadata)
    with pytest.raises(grpc.RpcError):
        stub.WhoAmI(pb.WhoAmIRequest())
    assert count("OK") == ok_before + 1
    assert count("UNAUTHENTICATED") == refused_before + 1


def test_refusals_are_counted_by_method_code_and_error_reason(  # type: ignore[no-untyped-def]
    stub: ControlPlaneStub, operator: Caller, metrics_registry: CollectorRegistry, make_account
) -> None:
    def count(method: str, code: str, reason: str) -> float:
        labels = {"method": f"atelier.v1.ControlPlane/{method}", "code": code, "reason": reason}
        return metrics_registry.get_sample_value("atelier_control_plane_refusals_total", labels) or 0.0

    broke_before = count("ReserveCredits", "RESOURCE_EXHAUSTED", "INSUFFICIENT_CREDITS")
    anonymous_before = count("WhoAmI", "UNAUTHENTICATED", "")
    account_id = make_account(credits=1)
    with pytest.raises(grpc.RpcError):
        stub.ReserveCredits(pb.ReserveCreditsRequest(account_id=account_id, amount=5), metadata=operator.metadata)
    with pytest.raises(grpc.RpcError):
        stub.WhoAmI(pb.WhoAmIRequest())
    stub.WhoAmI(pb.WhoAmIRequest(), metadata=operator.metadata)

    assert count("ReserveCredits", "RESOURCE_EXHAUSTED", "INSUFFICIENT_CREDITS") == broke_before + 1
    # An error without ErrorInfo is still a refusal, under an empty reason; a success is none.
    assert count("WhoAmI", "UNAUTHENTICATED", "") == anonymous_before + 1
    assert count("WhoAmI", "OK", "") == 0


def test_serve_process_answers_exports_metrics_and_stops_cleanly_on_sigterm(
    database_url: str, operator: Caller, tmp_path: Path
) -> None:
    grpc_port, metrics_port = _free_port(), _free_port()
    address = f"127.0.0.1:{grpc_port}"
    env = {
        **os.environ,
        "ATELIER_DATABASE_URL": database_url,
        "ATELIER_HOME": str(tmp_path),
        "ATELIER_CONTROL_PLANE_LISTEN": address,
        "ATELIER_CONTROL_PLANE_METRICS_PORT": str(metrics_port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "control_plane", "serve"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(address, timeout_s=30)
        with grpc.insecure_channel(address) as channel:
            key = ControlPlaneStub(channel).WhoAmI(pb.WhoAmIRequest(), metadata=operator.metadata).key
        assert key.key_id == operator.principal.key_id
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert (
            'atelier_control_plane_rpc_duration_seconds_count{code="OK",method="atelier.v1.ControlPlane/WhoAmI"}'
            in (metrics)
        )
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "control plane serving" in stderr
    assert "control plane stopped" in stderr
    assert operator.secret not in stderr


def test_migrate_command_prints_what_it_applied(postgres_url: str, tmp_path: Path) -> None:
    with fresh_database(postgres_url, prefix="atelier_cli") as url:
        env = {**os.environ, "ATELIER_DATABASE_URL": url, "ATELIER_HOME": str(tmp_path)}
        command = [sys.executable, "-m", "control_plane", "migrate"]
        first = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
        second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == [m.version for m in load_migrations()]
    assert second.returncode == 0, second.stderr
    assert second.stdout == ""


def test_a_bad_setting_is_reported_by_name_with_exit_status_2(tmp_path: Path) -> None:
    env = {**os.environ, "ATELIER_HOME": str(tmp_path), "ATELIER_CONTROL_PLANE_METRICS_PORT": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "control_plane", "serve"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "ATELIER_CONTROL_PLANE_METRICS_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_port_is_reported_in_one_line_with_exit_status_1(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            **os.environ,
            "ATELIER_DATABASE_URL": database_url,
            "ATELIER_HOME": str(tmp_path),
            "ATELIER_CONTROL_PLANE_LISTEN": f"127.0.0.1:{taken.getsockname()[1]}",
            "ATELIER_CONTROL_PLANE_METRICS_PORT": "0",
        }
        result = subprocess.run(
            [sys.executable, "-m", "control_plane", "serve"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "control plane cannot start: cannot listen on 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
