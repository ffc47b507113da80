"""Abuse limits over gRPC: rate limits per key and per account, the bound on generations in
flight, idempotency keys on ReserveCredits, and the maximum message size.

Each test starts its own server with tight limits (the session's server runs without any), on
the session's database and clock, so refills and expiries happen only when a test moves time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.bootstrap import ControlPlaneDeps
from control_plane.clock import ManualClock
from control_plane.config import ControlPlaneConfig
from control_plane.db.pool import Pool
from control_plane.entrypoints.server import add_listen_port, build_server
from control_plane.policy import PolicyRegistry
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._support import Caller, bearer, error_reason, png_bytes

StartServer = Callable[..., ControlPlaneStub]


@pytest.fixture
def start_server(
    config: ControlPlaneConfig,
    pool: Pool,
    blobs: LocalBlobStore,
    clock: ManualClock,
    keys: PostgresKeyStore,
    policies: PolicyRegistry,
) -> Iterator[StartServer]:
    """Starts a server with the session's configuration changed by the given fields."""
    servers: list[grpc.Server] = []
    channels: list[grpc.Channel] = []

    def start(**changes: object) -> ControlPlaneStub:
        limited = dataclasses.replace(config, **changes)  # type: ignore[arg-type]
        deps = ControlPlaneDeps(
            pool=pool, blobs=blobs, clock=clock, keys=keys, policies=policies, registry=CollectorRegistry()
        )
        server = build_server(limited, deps)
        port = add_listen_port(server, "127.0.0.1:0")
        server.start()
        servers.append(server)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return ControlPlaneStub(channel)

    yield start
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(grace=None)


def _details(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo | None, float | None]:
    """The ErrorInfo and the RetryInfo delay (seconds) of an error's rich status."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    info, delay = None, None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToMilliseconds() / 1000
    return info, delay


def _assert_holds_counted(pool: Pool, account_id: str) -> None:
    """The balance row's held_count (what the bound reads) is the number of held reservations."""
    with pool.connection() as conn:
        row = conn.execute(
            """
            SELECT b.held_count, (SELECT count(*) FROM reservations r WHERE r.account_id = b.account_id
                                  AND r.state = 'held')
            FROM credit_balances b WHERE b.account_id = %s
            """,
            (account_id,),
        ).fetchone()
    assert row is not None and row[0] == row[1]


def _refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _balance(stub: ControlPlaneStub, caller: Caller, account_id: str) -> pb.Balance:
    return stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=caller.metadata).balance


def _reserve(
    stub: ControlPlaneStub, metadata: tuple[tuple[str, str], ...], account_id: str, amount: int = 1, **fields: object
) -> pb.ReserveCreditsResponse:
    request = pb.ReserveCreditsRequest(account_id=account_id, amount=amount, purpose="test", **fields)
    return stub.ReserveCredits(request, metadata=metadata)


def _release(stub: ControlPlaneStub, caller: Caller, reservation_id: str) -> None:
    stub.ReleaseReservation(pb.ReleaseReservationRequest(reservation_id=reservation_id), metadata=caller.metadata)


def _key(key: str, fingerprint: bytes = b"request-1") -> pb.IdempotencyKey:
    return pb.IdempotencyKey(key=key, request_fingerprint=fingerprint)


class TestRateLimitPerKey:
    def test_a_key_past_its_burst_is_refused_until_a_token_is_back(
        self, start_server: StartServer, operator: Caller, make_account: Callable[..., str], clock: ManualClock
    ) -> None:
        account_id = make_account(credits=10)
        stub = start_server(key_rate_per_s=2, key_burst=5)
        for _ in range(5):
            _balance(stub, operator, account_id)

        error = _refusal(lambda: _balance(stub, operator, account_id))

        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit of this API key exceeded: retry in 0.500 s" in (error.details() or "")
        info, delay = _details(error)
        assert info is not None and info.reason == "RATE_LIMITED" and info.metadata["scope"] == "API key"
        assert delay == pytest.approx(0.5)
        clock.advance(timedelta(seconds=0.5))
        assert _balance(stub, operator, account_id).total == 10
        assert error_reason(_refusal(lambda: _balance(stub, operator, account_id))) == "RATE_LIMITED"

    def test_each_key_has_its_own_bucket(
        self,
        start_server: StartServer,
        operator: Caller,
        make_account: Callable[..., str],
        make_key: Callable[..., str],
    ) -> None:
        account_id = make_account(credits=10)
        other = make_key(pb.SCOPE_READ, pb.SCOPE_ACT_FOR_ANY)
        stub = start_server(key_rate_per_s=1, key_burst=2)
        for _ in range(2):
            _balance(stub, operator, account_id)
        assert error_reason(_refusal(lambda: _balance(stub, operator, account_id))) == "RATE_LIMITED"

        request = pb.GetBalanceRequest(account_id=account_id)
        assert stub.GetBalance(request, metadata=bearer(other)).balance.total == 10
        # Unknown keys get buckets too, and are still refused as unauthenticated first.
        assert _refusal(lambda: stub.GetBalance(request, metadata=bearer("x" * 40))).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )

    def test_releasing_and_storing_with_commit_borrow_up_to_a_burst(
        self, start_server: StartServer, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=10)
        # Held through the unlimited session server, settled through the limited one.
        first = _reserve(stub, operator.metadata, account_id).reservation.reservation_id
        second = _reserve(stub, operator.metadata, account_id).reservation.reservation_id
        limited = start_server(key_rate_per_s=1, key_burst=2)
        for _ in range(2):
            _balance(limited, operator, account_id)
        assert error_reason(_refusal(lambda: _balance(limited, operator, account_id))) == "RATE_LIMITED"

        _release(limited, operator, first)
        item = pb.NewContent(kind=pb.CONTENT_KIND_GENERATED, media_type="image/png", data=png_bytes(1))
        stored = limited.StoreContent(
            pb.StoreContentRequest(account_id=account_id, items=[item], commit_reservation_id=second),
            metadata=operator.metadata,
        )

        assert stored.reservation.state == pb.RESERVATION_STATE_COMMITTED
        assert (stored.balance.total, stored.balance.held) == (9, 0)
        # Two tokens in debt now: even settling calls (here, naming a made-up reservation) wait.
        bogus = pb.StoreContentRequest(account_id=account_id, items=[item], commit_reservation_id=first)
        error = _refusal(lambda: limited.StoreContent(bogus, metadata=operator.metadata))
        assert error_reason(error) == "RATE_LIMITED"
        assert _details(error)[1] == pytest.approx(1.0)

    def test_zero_turns_the_limit_off(
        self, start_server: StartServer, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=10)
        stub = start_server(key_rate_per_s=0, key_burst=1)
        for _ in range(20):
            _balance(stub, operator, account_id)


class TestRateLimitPerAccount:
    def test_reservations_of_an_account_are_limited_whichever_key_sends_them(
        self,
        start_server: StartServer,
        operator: Caller,
        make_account: Callable[..., str],
        make_key: Callable[..., str],
        clock: ManualClock,
    ) -> None:
        account_id, neighbour = make_account(credits=10), make_account(credits=10)
        generator = Caller(operator.principal, make_key(pb.SCOPE_GENERATE, pb.SCOPE_ACT_FOR_ANY))
        stub = start_server(account_rate_per_s=1, account_burst=3)
        for caller in (operator, generator, operator):
            _release(stub, operator, _reserve(stub, caller.metadata, account_id).reservation.reservation_id)

        error = _refusal(lambda: _reserve(stub, generator.metadata, account_id))

        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info, delay = _details(error)
        assert info is not None and (info.reason, info.metadata["scope"]) == ("RATE_LIMITED", "account")
        assert delay == pytest.approx(1.0)
        assert _balance(stub, operator, account_id).held == 0  # nothing held by the refusal
        _reserve(stub, operator.metadata, neighbour)  # another account has its own bucket
        clock.advance(timedelta(seconds=1))
        _reserve(stub, generator.metadata, account_id)


class TestConcurrentGenerations:
    def test_an_account_holds_at_most_the_configured_reservations(
        self, start_server: StartServer, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=10)
        stub = start_server(max_concurrent_generations=2, concurrency_retry_s=3)
        first = _reserve(stub, operator.metadata, account_id).reservation.reservation_id
        _reserve(stub, operator.metadata, account_id)

        error = _refusal(lambda: _reserve(stub, operator.metadata, account_id))

        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info, delay = _details(error)
        assert info is not None and (info.reason, info.metadata["limit"]) == ("TOO_MANY_CONCURRENT_REQUESTS", "2")
        assert delay == 3.0
        assert "2 generations in flight" in (error.details() or "")
        assert _balance(stub, operator, account_id).held == 2
        _release(stub, operator, first)
        _reserve(stub, operator.metadata, account_id)

    def test_expired_holds_do_not_count(
        self,
        start_server: StartServer,
        operator: Caller,
        make_account: Callable[..., str],
        clock: ManualClock,
        pool: Pool,
    ) -> None:
        account_id = make_account(credits=10)
        stub = start_server(max_concurrent_generations=1)
        _reserve(stub, operator.metadata, account_id, ttl_seconds=5)
        assert error_reason(_refusal(lambda: _reserve(stub, operator.metadata, account_id))) == (
            "TOO_MANY_CONCURRENT_REQUESTS"
        )

        clock.advance(timedelta(seconds=6))  # past expiry, not swept yet

        _reserve(stub, operator.metadata, account_id)
        assert _balance(stub, operator, account_id).held == 1  # the expired hold was given back
        _assert_holds_counted(pool, account_id)

    def test_racing_callers_never_exceed_the_bound(
        self, start_server: StartServer, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        account_id = make_account(credits=100)
        stub = start_server(max_concurrent_generations=3)
        request = pb.ReserveCreditsRequest(account_id=account_id, amount=1)
        futures = [stub.ReserveCredits.future(request, metadata=operator.metadata) for _ in range(24)]
        granted, reasons = 0, set()
        for future in futures:
            try:
                future.result(timeout=30)
                granted += 1
            except grpc.RpcError as error:
                reasons.add(error_reason(error))

        assert granted == 3
        assert reasons == {"TOO_MANY_CONCURRENT_REQUESTS"}
        with pool.connection() as conn:
            held = conn.execute(
                "SELECT count(*) FROM reservations WHERE account_id = %s AND state = 'held'", (account_id,)
            ).fetchone()
        assert held == (3,)
        _assert_holds_counted(pool, account_id)


class TestIdempotencyKeys:
    def test_a_retry_after_commit_replays_the_result_and_charges_once(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=10)
        first = _reserve(stub, operator.metadata, account_id, 4, idempotency=_key("order-1"))
        assert not first.replayed and not first.replayed_content_ids
        items = [
            pb.NewContent(kind=pb.CONTENT_KIND_GENERATED, media_type="image/png", data=png_bytes(seed))
            for seed in (1, 2)
        ]
        stored = stub.StoreContent(
            pb.StoreContentRequest(
                account_id=account_id, items=items, commit_reservation_id=first.reservation.reservation_id
            ),
            metadata=operator.metadata,
        )

        retry = _reserve(stub, operator.metadata, account_id, 4, idempotency=_key("order-1"))

        assert retry.replayed
        assert retry.reservation.reservation_id == first.reservation.reservation_id
        assert retry.reservation.state == pb.RESERVATION_STATE_COMMITTED
        assert sorted(retry.replayed_content_ids) == sorted(c.content_id for c in stored.contents)
        assert (retry.balance.total, retry.balance.held) == (6, 0)
        assert _balance(stub, operator, account_id).total == 6

    def test_a_retry_while_the_first_is_held_is_aborted_with_a_retry_hint(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account_id = make_account(credits=10)
        _reserve(stub, operator.metadata, account_id, 2, idempotency=_key("order-1"))

        error = _refusal(lambda: _reserve(stub, operator.metadata, account_id, 2, idempotency=_key("order-1")))

        assert error.code() == grpc.StatusCode.ABORTED
        info, delay = _details(error)
        assert info is not None and info.reason == "IDEMPOTENCY_KEY_IN_FLIGHT"
        assert delay == 1.0
        assert _balance(stub, operator, account_id).held == 2

    @pytest.mark.parametrize(
        "changed",
        [{"amount": 3}, {"idempotency": _key("order-1", b"request-2")}, {"prompt": "a different prompt"}],
        ids=["amount", "fingerprint", "prompt"],
    )
    def test_the_same_key_with_a_different_request_is_refused(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], changed: dict[str, object]
    ) -> None:
        account_id = make_account(credits=10)
        original: dict[str, object] = {"amount": 2, "idempotency": _key("order-1"), "prompt": "a cat"}
        _reserve(stub, operator.metadata, account_id, **original)  # type: ignore[arg-type]

        error = _refusal(lambda: _reserve(stub, operator.metadata, account_id, **{**original, **changed}))  # type: ignore[arg-type]

        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == "IDEMPOTENCY_KEY_REUSED"
        assert "idempotency_key" in (error.details() or "")
        assert _balance(stub, operator, account_id).held == 2

    def test_a_released_or_expired_attempt_frees_the_key(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], clock: ManualClock
    ) -> None:
        account_id = make_account(credits=10)
        released = _reserve(stub, operator.metadata, account_id, 2, idempotency=_key("k")).reservation
        _release(stub, operator, released.reservation_id)
        expired = _reserve(stub, operator.metadata, account_id, 2, ttl_seconds=5, idempotency=_key("k")).reservation
        assert expired.reservation_id != released.reservation_id

        clock.advance(timedelta(seconds=6))
        third = _reserve(stub, operator.metadata, account_id, 2, idempotency=_key("k", b"another request"))

        assert not third.replayed
        assert third.reservation.reservation_id not in (released.reservation_id, expired.reservation_id)
        assert (third.balance.total, third.balance.held) == (10, 2)  # the expired hold was given back

    def test_keys_belong_to_one_account(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        first, second = make_account(credits=10), make_account(credits=10)
        _reserve(stub, operator.metadata, first, idempotency=_key("shared"))
        response = _reserve(stub, operator.metadata, second, idempotency=_key("shared"))
        assert not response.replayed and response.balance.held == 1

    def test_racing_retries_hold_once(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        account_id = make_account(credits=100)
        request = pb.ReserveCreditsRequest(account_id=account_id, amount=5, idempotency=_key("race"))
        with ThreadPoolExecutor(16) as threads:
            outcomes = list(threads.map(lambda _: _outcome(stub, request, operator), range(16)))

        assert outcomes.count("OK") == 1
        assert set(outcomes) == {"OK", "ABORTED"}
        assert _balance(stub, operator, account_id).held == 5
        _assert_holds_counted(pool, account_id)
        with pool.connection() as conn:
            assert conn.execute(
                "SELECT count(*) FROM reservations WHERE account_id = %s", (account_id,)
            ).fetchone() == (1,)

    @pytest.mark.parametrize("key", ["", "x" * 129, "tab\there", "ümlaut"])
    def test_a_malformed_key_is_an_invalid_argument(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], key: str
    ) -> None:
        account_id = make_account(credits=10)
        error = _refusal(lambda: _reserve(stub, operator.metadata, account_id, idempotency=_key(key)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("idempotency_key:")


def _outcome(stub: ControlPlaneStub, request: pb.ReserveCreditsRequest, caller: Caller) -> str:
    try:
        stub.ReserveCredits(request, metadata=caller.metadata, timeout=30)
        return "OK"
    except grpc.RpcError as error:
        return error.code().name


class TestMessageSizes:
    def test_a_request_over_the_maximum_is_resource_exhausted_and_stores_nothing(
        self, start_server: StartServer, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        account_id = make_account()
        stub = start_server(max_message_bytes=1024 * 1024)
        item = pb.NewContent(kind=pb.CONTENT_KIND_UPLOAD, media_type="image/png", data=b"\0" * (2 * 1024 * 1024))

        error = _refusal(
            lambda: stub.StoreContent(
                pb.StoreContentRequest(account_id=account_id, items=[item]), metadata=operator.metadata
            )
        )

        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "vs. 1048576)" in (error.details() or "")  # gRPC names the limit it applied
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM content").fetchone() == (0,)
        small = pb.NewContent(kind=pb.CONTENT_KIND_UPLOAD, media_type="image/png", data=png_bytes(3))
        stub.StoreContent(pb.StoreContentRequest(account_id=account_id, items=[small]), metadata=operator.metadata)
