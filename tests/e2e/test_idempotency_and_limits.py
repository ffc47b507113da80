"""Idempotency keys and abuse limits through the Gateway: a retried Generate replays its result
and charges once, and the control plane's refusals reach the caller with their rich details."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from inference.config import ModelConfig
from inference.pricing import generation_cost
from protos.atelier.v1 import control_plane_pb2, inference_pb2
from tests.e2e._status import reason_and_retry_delay

TINY = ModelConfig(name="tiny-sd")


def _request(account_id: str, **fields: object) -> inference_pb2.GenerateRequest:
    fields.setdefault("prompt", "a lighthouse at dusk")
    fields.setdefault("steps", 2)
    return inference_pb2.GenerateRequest(account_id=account_id, **fields)  # type: ignore[arg-type]


class TestIdempotentGenerate:
    def test_a_retry_returns_the_same_images_and_charges_once(
        self, inference, operator_metadata, make_account, balance_of
    ) -> None:
        account_id = make_account(10)
        # No seed: the retry must replay the first request's random seed, not draw a new one.
        request = _request(account_id, num_images=2, idempotency_key="order-42")

        first = inference.Generate(request, metadata=operator_metadata, timeout=120)
        retry = inference.Generate(request, metadata=operator_metadata, timeout=120)

        assert not first.replayed and retry.replayed
        assert [i.content_id for i in retry.images] == [i.content_id for i in first.images]
        assert [i.png for i in retry.images] == [i.png for i in first.images]
        assert [(i.seed, i.sha256) for i in retry.images] == [(i.seed, i.sha256) for i in first.images]
        assert retry.parameters == first.parameters
        cost = generation_cost(TINY, width=64, height=64, steps=2, num_images=2)
        assert retry.credits_charged == first.credits_charged == cost
        assert balance_of(account_id).total == 10 - cost

    def test_the_same_key_with_another_request_is_refused_and_charges_nothing(
        self, inference, operator_metadata, make_account, balance_of
    ) -> None:
        account_id = make_account(10)
        inference.Generate(_request(account_id, seed=1, idempotency_key="k"), metadata=operator_metadata, timeout=120)
        total = balance_of(account_id).total
        try:
            inference.Generate(
                _request(account_id, seed=2, idempotency_key="k"), metadata=operator_metadata, timeout=120
            )
            raise AssertionError("a different request with the same key was accepted")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "idempotency_key" in (error.details() or "")
            assert reason_and_retry_delay(error)[0] == "IDEMPOTENCY_KEY_REUSED"
        assert balance_of(account_id).total == total

    def test_a_retry_while_the_first_runs_is_aborted_with_a_retry_hint_then_replays(
        self, inference, operator_metadata, make_account, balance_of
    ) -> None:
        account_id = make_account(10)
        request = _request(account_id, steps=8, seed=5, idempotency_key="running")
        stream = inference.GenerateStream(request, metadata=operator_metadata, timeout=120)
        first_progress = next(stream)  # the model runs, so the reservation is held
        assert first_progress.HasField("progress")
        try:
            inference.Generate(request, metadata=operator_metadata, timeout=60)
            raise AssertionError("a retry of a running request was accepted")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.ABORTED
            assert reason_and_retry_delay(error) == ("IDEMPOTENCY_KEY_IN_FLIGHT", 1.0)
            assert "retry in 1 s" in (error.details() or "")
        result = next(message for message in stream if message.HasField("result")).result

        retry = inference.Generate(request, metadata=operator_metadata, timeout=120)

        assert retry.replayed
        assert [i.png for i in retry.images] == [i.png for i in result.images]
        assert balance_of(account_id).total == 10 - result.credits_charged

    def test_a_malformed_key_is_invalid_argument(self, inference, operator_metadata, make_account) -> None:
        account_id = make_account(10)
        try:
            inference.Generate(_request(account_id, idempotency_key="x" * 129), metadata=operator_metadata, timeout=60)
            raise AssertionError("a 129-character key was accepted")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (error.details() or "").startswith("idempotency_key:")


class TestLimitsThroughTheGateway:
    def test_the_account_rate_limit_reaches_the_caller_with_its_retry_hint(
        self, inference, control_plane, operator_metadata, make_account
    ) -> None:
        # A key of its own, so this burst cannot drain the shared operator key's bucket, and
        # an account without credits, so no request runs the model.
        secret = control_plane.CreateApiKey(
            control_plane_pb2.CreateApiKeyRequest(
                name="burst", scopes=[control_plane_pb2.SCOPE_GENERATE, control_plane_pb2.SCOPE_ACT_FOR_ANY]
            ),
            metadata=operator_metadata,
        ).secret
        metadata = (("authorization", f"Bearer {secret}"),)
        account_id = make_account(0)
        request = _request(account_id)

        def outcome(_: int) -> tuple[grpc.StatusCode, str | None, float | None, str]:
            try:
                inference.Generate(request, metadata=metadata, timeout=60)
                return grpc.StatusCode.OK, None, None, ""
            except grpc.RpcError as error:
                return error.code(), *reason_and_retry_delay(error), error.details() or ""

        # 40 is the default burst and 10/s the refill: 120 at once cannot all get a token.
        with ThreadPoolExecutor(32) as threads:
            outcomes = list(threads.map(outcome, range(120)))

        reasons = {reason for _, reason, _, _ in outcomes}
        assert reasons == {"INSUFFICIENT_CREDITS", "RATE_LIMITED"}
        limited = [o for o in outcomes if o[1] == "RATE_LIMITED"]
        assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, *_ in limited)
        assert all(delay is not None and 0 < delay <= 0.1 for _, _, delay, _ in limited)
        assert all("rate limit of this account exceeded: retry in" in message for *_, message in limited)

    def test_too_many_generations_in_flight_reach_the_caller_with_a_retry_hint(
        self, inference, control_plane, operator_metadata, make_account, balance_of
    ) -> None:
        account_id = make_account(100)
        # Eight generations in flight (the default bound), held the way the Gateway holds them.
        held = [
            control_plane.ReserveCredits(
                control_plane_pb2.ReserveCreditsRequest(account_id=account_id, amount=1, purpose="in flight"),
                metadata=operator_metadata,
            ).reservation.reservation_id
            for _ in range(8)
        ]
        try:
            try:
                inference.Generate(_request(account_id), metadata=operator_metadata, timeout=60)
                raise AssertionError("a ninth generation in flight was accepted")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert reason_and_retry_delay(error) == ("TOO_MANY_CONCURRENT_REQUESTS", 1.0)
                assert "8 generations in flight" in (error.details() or "")
            assert balance_of(account_id).held == 8
        finally:
            for reservation_id in held:
                control_plane.ReleaseReservation(
                    control_plane_pb2.ReleaseReservationRequest(reservation_id=reservation_id),
                    metadata=operator_metadata,
                )
        assert len(inference.Generate(_request(account_id), metadata=operator_metadata, timeout=120).images) == 1


@pytest.mark.parametrize(
    ("prompt_mib", "code", "detail"),
    [
        # `atelier up` caps Serve's proxy at 64 MiB (Ray's own default is 2 GiB): a bigger request is
        # refused by gRPC before any replica parses it, not by the prompt's length check; gRPC names the
        # limit it applied.
        (65, grpc.StatusCode.RESOURCE_EXHAUSTED, f"vs. {64 * 1024 * 1024})"),
        # Serve's proxy hands each request to the gateway replica over that replica's own gRPC server,
        # whose receive limit is 4 MiB unless raised (inference/serve_environment.py): a 6 MiB request
        # gets the gateway's own answer, naming the field, not a transport error between the two.
        (6, grpc.StatusCode.INVALID_ARGUMENT, "prompt: must be at most"),
    ],
    ids=["over-the-proxy-limit", "over-grpc-default-under-the-proxy-limit"],
)
def test_a_large_request_is_refused_by_the_right_hop(
    inference, operator_metadata, make_account, prompt_mib: int, code: grpc.StatusCode, detail: str
) -> None:
    request = _request(make_account(10), prompt="x" * (prompt_mib * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as caught:
        inference.Generate(request, metadata=operator_metadata, timeout=60)
    assert caught.value.code() == code, caught.value.details()
    assert detail in (caught.value.details() or "")
