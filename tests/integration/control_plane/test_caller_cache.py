"""A replica that keeps recently read API keys in memory still honours revocation: at once through
itself, within the cache's lifetime through another replica, and a rotation's grace ends on time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import grpc
import pytest
from prometheus_client import CollectorRegistry

from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.bootstrap import ControlPlaneDeps
from control_plane.caller_facts import CallerFacts
from control_plane.clock import ManualClock
from control_plane.config import ControlPlaneConfig
from control_plane.db.pool import Pool
from control_plane.entrypoints.server import add_listen_port, build_server
from control_plane.policy import PolicyRegistry
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._support import Caller, bearer

CACHE_TTL_S = 1.0


@pytest.fixture
def cached_stub(
    config: ControlPlaneConfig,
    pool: Pool,
    blobs: LocalBlobStore,
    clock: ManualClock,
    keys: PostgresKeyStore,
    policies: PolicyRegistry,
) -> Iterator[ControlPlaneStub]:
    """A second replica on the session's database, caching callers' keys for CACHE_TTL_S."""
    deps = ControlPlaneDeps(
        pool=pool,
        blobs=blobs,
        clock=clock,
        keys=keys,
        policies=policies,
        registry=CollectorRegistry(),
        caller_facts=CallerFacts.with_ttl(CACHE_TTL_S),
    )
    server = build_server(config, deps)
    port = add_listen_port(server, "127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield ControlPlaneStub(channel)
    server.stop(grace=None)


def _key_id(secret: str) -> str:
    return "_".join(secret.split("_")[1:3])


def _authenticates(stub: ControlPlaneStub, secret: str) -> bool:
    try:
        stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(secret))
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
        return False
    return True


def test_a_key_revoked_through_the_caching_replica_is_refused_at_once(
    cached_stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str]
) -> None:
    secret = make_key(pb.SCOPE_READ)
    assert _authenticates(cached_stub, secret)

    cached_stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=_key_id(secret)), metadata=operator.metadata)

    assert not _authenticates(cached_stub, secret)


def test_a_key_revoked_through_another_replica_is_refused_within_the_cache_lifetime(
    cached_stub: ControlPlaneStub, stub: ControlPlaneStub, operator: Caller, make_key: Callable[..., str]
) -> None:
    secret = make_key(pb.SCOPE_READ)
    assert _authenticates(cached_stub, secret)
    stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=_key_id(secret)), metadata=operator.metadata)
    revoked_at = time.monotonic()

    while _authenticates(cached_stub, secret):
        assert time.monotonic() - revoked_at < CACHE_TTL_S + 0.5, "the revoked key still works past the cache lifetime"
        time.sleep(0.05)  # polling a deadline: nothing signals the cache's expiry


def test_a_rotated_keys_grace_period_ends_on_time_though_the_key_is_cached(
    cached_stub: ControlPlaneStub,
    stub: ControlPlaneStub,
    operator: Caller,
    make_key: Callable[..., str],
    clock: ManualClock,
) -> None:
    old = make_key(pb.SCOPE_READ)
    # Rotated through the other replica, so this one's cache is not cleared by it.
    request = pb.RotateApiKeyRequest(key_id=_key_id(old), grace_seconds=60)
    stub.RotateApiKey(request, metadata=operator.metadata)
    assert _authenticates(cached_stub, old)

    clock.advance(timedelta(seconds=61))

    assert not _authenticates(cached_stub, old)


def test_unknown_secrets_are_refused_every_time(cached_stub: ControlPlaneStub, make_key: Callable[..., str]) -> None:
    secret = make_key(pb.SCOPE_READ)
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert _authenticates(cached_stub, secret)
    assert not _authenticates(cached_stub, forged)
    assert not _authenticates(cached_stub, forged)
