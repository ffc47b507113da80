"""Faults under a running cluster: a diffusion replica killed mid-generation, a full blob store,
the embedded PostgreSQL stopped.

Both run on a local cluster of this module's own, so killing and filling disturb no other test.

1. A Generate or GenerateStream of 50 denoising steps; once the replica is generating (the
   stream's first progress message, or the replica's scheduler reporting a running batch),
   its worker process is SIGKILLed, as the kernel's OOM killer or a crash would end it.
   Expected (the contract in inference.proto): the call fails with UNAVAILABLE (the gateway
   does not retry for the caller); the reservation is released (balance total unchanged,
   nothing held); no content row and no blob of the account exist; and Serve replaces the
   replica, so a later Generate succeeds and is charged once.
2. The control plane's blob directory becomes a 2 MiB tmpfs, filled to the last byte, under
   the running cluster. A Generate then fails with RESOURCE_EXHAUSTED and ErrorInfo reason
   BLOB_STORE_FULL (relayed by the gateway), charges nothing and stores nothing; once the
   filesystem is gone again the next Generate succeeds. (Mounting needs CAP_SYS_ADMIN; where
   it is not permitted this case is skipped, and test_blob_store_full covers the control
   plane under RLIMIT_FSIZE.)
3. The embedded PostgreSQL is stopped: `atelier status` exits non-zero within 10 s, the control
   plane's health says NOT_SERVING, a Generate with a 3 s deadline fails with UNAVAILABLE
   (DATABASE_UNAVAILABLE) within it, and `atelier up` starts the database again (nothing else),
   so the next Generate succeeds and is charged exactly once.

While the killed replica is being replaced, the gateway's health answers NOT_SERVING for the
model and a Generate is refused at once with POOL_UNAVAILABLE, reserving nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from atelier._processes import is_running, stop_session
from atelier.launcher import LocalCluster
from atelier.ports import local_cluster_ports
from atelier.settings import ClusterSettings
from atelier.state import ClusterState, load_operator_key
from control_plane.db.embedded import EmbeddedPostgres
from protos.atelier.v1 import control_plane_pb2, inference_pb2
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from protos.atelier.v1.inference_pb2_grpc import InferenceStub
from tests.e2e._status import reason_and_retry_delay
from tests.faults._support import fill_up, small_tmpfs, wait_for
from tests.integration.control_plane._support import error_reason

pytestmark = pytest.mark.e2e

MODEL = "tiny-sd"
MODEL_DEPLOYMENT = f"DiffusionModel-{MODEL}"
REPLICA_CLASS = f"ServeReplica:atelier:{MODEL_DEPLOYMENT}"
RECOVERY_WITHIN_S = 180.0
"""Serve notices the dead replica, starts another and loads tiny-sd into it."""


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """Under the system temp dir, not pytest's: the embedded PostgreSQL runs as pgserver's user, which
    must traverse every parent, and any pytest session starting meanwhile resets pytest's base
    directory to 0700 (as `private_postgres` explains)."""
    path = Path(tempfile.mkdtemp(prefix="atelier-faults-home-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def settings(home: Path) -> ClusterSettings:
    """Always its own embedded PostgreSQL under `home` (which a test stops), never a shared server:
    sweeps of other clusters on a shared database (`atelier sweep --as-of` a month ahead) would
    expire its reservations, and stopping it must disturb no other test."""
    return ClusterSettings(home=home, database_url=None, **local_cluster_ports(), demo_credits=0)


@pytest.fixture(scope="module")
def cluster(settings: ClusterSettings) -> Iterator[ClusterState]:
    """A cluster of this module's own, torn down afterwards."""
    local = LocalCluster(settings, log=lambda line: print(f"[faults cluster] {line}"))
    try:
        yield local.up()
    finally:
        local.down()


@pytest.fixture(scope="module")
def metadata(cluster: ClusterState, home: Path) -> tuple[tuple[str, str], ...]:
    key = load_operator_key(home.resolve())
    assert key is not None
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture(scope="module")
def ray_driver(cluster: ClusterState) -> Iterator[Callable[[], bool]]:
    """Connects to the cluster; yields a function telling whether the replica is generating."""
    import ray
    from ray import serve

    ray.init(address=cluster.ray_address, logging_level="WARNING", log_to_driver=False)
    try:
        handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name="atelier")
        yield lambda: bool(handle.stats.remote().result(timeout_s=60).running)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def stubs(cluster: ClusterState) -> Iterator[tuple[ControlPlaneStub, InferenceStub]]:
    with (
        grpc.insecure_channel(cluster.control_plane_address) as control,
        grpc.insecure_channel(cluster.serve_grpc_address) as serving,
    ):
        yield ControlPlaneStub(control), InferenceStub(serving)


def _kill_replica(cluster: ClusterState) -> int:
    """SIGKILLs the tiny-sd pool's (only) replica worker; returns its pid."""
    from ray.util.state import list_actors

    alive = list_actors(
        address=cluster.ray_address,  # other clusters may run on this machine
        filters=[("class_name", "=", REPLICA_CLASS), ("state", "=", "ALIVE")],
        detail=True,
    )
    assert len(alive) == 1, f"expected one live {REPLICA_CLASS}, found {len(alive)}"
    pid = int(alive[0].pid)
    os.kill(pid, signal.SIGKILL)
    return pid


def _health(address: str, service: str) -> str:
    from atelier._processes import health_status

    return health_status(address, service)


def _long_request(account_id: str) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        account_id=account_id, prompt="a fox", steps=50, width=512, height=512, num_images=2, seed=1
    )


def _new_account(control: ControlPlaneStub, metadata: tuple[tuple[str, str], ...]) -> str:
    request = control_plane_pb2.CreateAccountRequest(
        tier=control_plane_pb2.TIER_FREE, birth_date="1990-01-01", initial_credits=100
    )
    return str(control.CreateAccount(request, metadata=metadata).account.account_id)


def _assert_nothing_charged_or_kept(
    control: ControlPlaneStub, metadata: tuple[tuple[str, str], ...], account_id: str, home: Path
) -> None:
    balance = control.GetBalance(control_plane_pb2.GetBalanceRequest(account_id=account_id), metadata=metadata).balance
    assert (balance.total, balance.held) == (100, 0), "the reservation was charged or is still held"
    listed = control.ListContent(control_plane_pb2.ListContentRequest(account_id=account_id), metadata=metadata)
    assert list(listed.contents) == [], "a content row of the failed generation exists"
    # Blob files are named by their key, `<account id>/<content id>`, percent-encoded.
    assert not list((home / "blobs").rglob(f"{account_id}%2F*")), "a blob of the failed generation exists"


def _generate_once_recovered(
    control: ControlPlaneStub, inference: InferenceStub, metadata: tuple[tuple[str, str], ...], account_id: str
) -> None:
    deadline = time.monotonic() + RECOVERY_WITHIN_S
    request = inference_pb2.GenerateRequest(account_id=account_id, prompt="a fox", steps=2, seed=2)
    while True:
        try:
            response = inference.Generate(request, metadata=metadata, timeout=120)
            break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the pool did not recover from the killed replica"
            time.sleep(1.0)
    assert len(response.images) == 1
    balance = control.GetBalance(control_plane_pb2.GetBalanceRequest(account_id=account_id), metadata=metadata).balance
    charged_once = (100 - response.credits_charged, 0)
    assert (balance.total, balance.held) == charged_once, "the recovered generation was not charged once"


def test_a_replica_killed_mid_stream_fails_the_stream_unavailable_and_charges_nothing(
    stubs: tuple[ControlPlaneStub, InferenceStub],
    metadata: tuple[tuple[str, str], ...],
    ray_driver: Callable[[], bool],
    home: Path,
    cluster: ClusterState,
) -> None:
    control, inference = stubs
    account_id = _new_account(control, metadata)
    stream = inference.GenerateStream(_long_request(account_id), metadata=metadata, timeout=300)
    watchdog = threading.Timer(240, stream.cancel)
    watchdog.start()
    try:
        with pytest.raises(grpc.RpcError) as failed:
            for message in stream:
                assert message.HasField("progress"), "the generation finished before the kill"
                if message.progress.step == 1:
                    _kill_replica(cluster)
    finally:
        watchdog.cancel()

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value  # type: ignore[attr-defined]
    assert "replica" in failed.value.details()  # type: ignore[attr-defined]
    # Serve's proxy drops a failed stream's trailing metadata, so no ErrorInfo here (Generate has it).
    _assert_nothing_charged_or_kept(control, metadata, account_id, home)
    _generate_once_recovered(control, inference, metadata, account_id)


def test_a_replica_killed_mid_generate_fails_it_unavailable_and_charges_nothing(
    stubs: tuple[ControlPlaneStub, InferenceStub],
    metadata: tuple[tuple[str, str], ...],
    ray_driver: Callable[[], bool],
    home: Path,
    cluster: ClusterState,
) -> None:
    control, inference = stubs
    account_id = _new_account(control, metadata)
    outcome: list[grpc.RpcError | inference_pb2.GenerateResponse] = []

    def generate() -> None:
        try:
            outcome.append(inference.Generate(_long_request(account_id), metadata=metadata, timeout=300))
        except grpc.RpcError as error:
            outcome.append(error)

    # The previous test's replacement replica may still be starting (Serve lists it RUNNING a
    # moment after it first served): a refusal as POOL_UNAVAILABLE then is the right answer, so
    # send again until the generation is under way.
    deadline = time.monotonic() + 120
    while True:
        outcome.clear()
        caller = threading.Thread(target=generate, daemon=True)
        caller.start()
        while caller.is_alive() and not ray_driver():
            assert time.monotonic() < deadline, "the replica never started generating"
            time.sleep(0.05)
        if caller.is_alive():
            break
        assert reason_and_retry_delay(outcome[0]) == ("POOL_UNAVAILABLE", 5.0), f"Generate answered {outcome}"  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "the pool did not come back"
        time.sleep(1.0)
    _kill_replica(cluster)
    caller.join(timeout=240)

    assert len(outcome) == 1 and isinstance(outcome[0], grpc.RpcError), f"Generate answered {outcome}"
    assert outcome[0].code() == grpc.StatusCode.UNAVAILABLE, outcome[0]  # type: ignore[attr-defined]
    assert reason_and_retry_delay(outcome[0]) == ("REPLICA_FAILED", 1.0)
    _assert_nothing_charged_or_kept(control, metadata, account_id, home)

    # Until Serve has replaced the replica, the pool has none: say so, and refuse at once.
    assert wait_for(lambda: _health(cluster.serve_grpc_address, MODEL) == "NOT_SERVING", within_s=30)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        inference.Generate(_long_request(account_id), metadata=metadata, timeout=60)
    assert time.monotonic() - started < 2.0, "a request to a pool without replicas was not refused at once"
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert reason_and_retry_delay(refused.value) == ("POOL_UNAVAILABLE", 5.0)
    _assert_nothing_charged_or_kept(control, metadata, account_id, home)

    _generate_once_recovered(control, inference, metadata, account_id)
    assert _health(cluster.serve_grpc_address, MODEL) == "SERVING"


def test_a_generate_into_a_full_blob_store_is_refused_and_charges_nothing(
    stubs: tuple[ControlPlaneStub, InferenceStub], metadata: tuple[tuple[str, str], ...], home: Path
) -> None:
    control, inference = stubs
    account_id = _new_account(control, metadata)
    request = inference_pb2.GenerateRequest(account_id=account_id, prompt="a fox", steps=2, seed=3)
    # Mounted over the live blob directory: the control plane opens blob paths by name, so
    # its next writes land on the full filesystem.
    with small_tmpfs(home / "blobs") as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs is not permitted here (test_blob_store_full uses RLIMIT_FSIZE)")
        fill_up(home / "blobs")
        with pytest.raises(grpc.RpcError) as refused:
            inference.Generate(request, metadata=metadata, timeout=120)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value  # type: ignore[attr-defined]
        assert error_reason(refused.value) == "BLOB_STORE_FULL"  # type: ignore[arg-type]
        assert "blob store is full" in refused.value.details()  # type: ignore[attr-defined]
        _assert_nothing_charged_or_kept(control, metadata, account_id, home)
    response = inference.Generate(request, metadata=metadata, timeout=120)
    balance = control.GetBalance(control_plane_pb2.GetBalanceRequest(account_id=account_id), metadata=metadata).balance
    assert (balance.total, balance.held) == (100 - response.credits_charged, 0)


def test_a_stopped_database_is_reported_fails_calls_within_their_deadline_and_up_restarts_it(
    stubs: tuple[ControlPlaneStub, InferenceStub],
    metadata: tuple[tuple[str, str], ...],
    settings: ClusterSettings,
    cluster: ClusterState,
    home: Path,
) -> None:
    control, inference = stubs
    account_id = _new_account(control, metadata)
    request = inference_pb2.GenerateRequest(account_id=account_id, prompt="a fox", steps=2, seed=4)
    assert EmbeddedPostgres(home / "postgres").stop(), "the embedded database was not running"
    try:
        assert wait_for(lambda: _health(cluster.control_plane_address, "atelier.v1.ControlPlane") == "NOT_SERVING", 5)

        started = time.monotonic()
        status = subprocess.run(
            [sys.executable, "-m", "atelier.cli", "status", "--json"],
            env={**os.environ, "ATELIER_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
        assert status.returncode == 1 and took < 10.0, f"status exited {status.returncode} after {took:.1f} s"
        report = json.loads(status.stdout)
        assert (report["healthy"], report["database"]["ok"], report["control_plane"]["ok"]) == (False, False, False)
        assert report["ray"]["ok"] and all(pool["ok"] for pool in report["pools"]), report

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            inference.Generate(request, metadata=metadata, timeout=3)
        took = time.monotonic() - started
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value  # type: ignore[attr-defined]
        assert reason_and_retry_delay(refused.value) == ("DATABASE_UNAVAILABLE", 1.0)
        assert took < 3.0
    finally:
        said: list[str] = []
        LocalCluster(settings, log=said.append).up()
    assert "restarted: database" in said, said

    response = inference.Generate(request, metadata=metadata, timeout=120)
    balance = control.GetBalance(control_plane_pb2.GetBalanceRequest(account_id=account_id), metadata=metadata).balance
    assert (balance.total, balance.held) == (100 - response.credits_charged, 0), "not charged exactly once"


def test_up_restarts_a_dead_control_plane_and_leaves_the_rest_running(
    stubs: tuple[ControlPlaneStub, InferenceStub],
    metadata: tuple[tuple[str, str], ...],
    settings: ClusterSettings,
    home: Path,
) -> None:
    control, _ = stubs
    before = ClusterState.load(home)
    assert before is not None and before.control_plane_pid is not None
    stop_session(before.control_plane_pid)

    said: list[str] = []
    LocalCluster(settings, log=said.append).up()
    assert "restarted: control plane" in said, said
    after = ClusterState.load(home)
    assert after is not None and after.control_plane_pid != before.control_plane_pid
    assert is_running(after.control_plane_pid) and after.ray_head_pid == before.ray_head_pid
    account_id = _new_account(control, metadata)  # the old channel reaches the new server
    assert control.GetBalance(control_plane_pb2.GetBalanceRequest(account_id=account_id), metadata=metadata)
