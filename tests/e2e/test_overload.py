"""Overload through the Gateway: once a pool is full (max_ongoing_requests=8 per running replica and one
batch queued, see inference/admission.py; Serve's max_queued_requests behind it), a request fails fast
with UNAVAILABLE, reason POOL_AT_CAPACITY and a retry hint, instead of queueing until its deadline; it
charges nothing."""

from __future__ import annotations

import time

import grpc

from inference.config import ModelConfig
from inference.pricing import generation_cost
from protos.atelier.v1 import control_plane_pb2, inference_pb2
from tests.e2e._status import reason_and_retry_delay

DEFAULTS = ModelConfig(name="tiny-sd")
# Each wave alone is more than the replica takes plus the queue allows; accounts stay under their
# own bound on generations in flight, so only the pool can refuse. Further waves follow while none
# is shed, so the test does not depend on how fast the gateway hands requests to the pool.
ACCOUNTS_PER_WAVE, PER_ACCOUNT, MAX_WAVES = 10, 8, 4
# Large enough that a batch takes seconds on the CPU (a batch of 8 at 64x64 takes ~1.5 s): the
# replica cannot drain the queue while requests arrive.
SIZE = 128


def test_a_full_pool_sheds_load_with_unavailable_and_charges_nothing(
    inference, control_plane, operator_metadata, make_account, balance_of
) -> None:
    assert DEFAULTS.max_ongoing_requests + DEFAULTS.max_queued_requests < ACCOUNTS_PER_WAVE * PER_ACCOUNT
    accounts: list[str] = []
    calls: list[grpc.Future] = []

    def any_failed() -> bool:
        return any(call.done() and call.exception() is not None for call in calls)

    for _ in range(MAX_WAVES):
        wave = [make_account(100) for _ in range(ACCOUNTS_PER_WAVE)]
        accounts += wave
        calls += [
            inference.Generate.future(
                inference_pb2.GenerateRequest(
                    account_id=account, prompt="a queue", steps=DEFAULTS.max_steps, width=SIZE, height=SIZE
                ),
                metadata=operator_metadata,
                timeout=300,
            )
            for account in wave
            for _ in range(PER_ACCOUNT)
        ]
        deadline = time.monotonic() + 10
        while not any_failed() and time.monotonic() < deadline:
            time.sleep(0.05)
        if any_failed():
            break
    for call in calls:
        call.cancel()

    shed = [call.exception() for call in calls if call.done() and not call.cancelled() and call.exception()]
    assert shed, f"none of {len(calls)} requests was shed while the pool's queue was full"
    for error in shed:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert "at capacity" in error.details()
        assert reason_and_retry_delay(error) == ("POOL_AT_CAPACITY", 1.0)

    # Every hold is returned, and each account paid exactly for the images it has stored.
    deadline = time.monotonic() + 120
    while any(balance_of(account).held for account in accounts):
        assert time.monotonic() < deadline, "reservations of shed or cancelled requests were not released"
        time.sleep(0.5)
    cost = generation_cost(DEFAULTS, width=SIZE, height=SIZE, steps=DEFAULTS.max_steps, num_images=1)
    for account in accounts:
        stored = control_plane.ListContent(
            control_plane_pb2.ListContentRequest(account_id=account, page_size=100), metadata=operator_metadata
        ).contents
        assert 100 - balance_of(account).total == cost * len(stored)
