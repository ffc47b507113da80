"""Overload through the Gateway: once a pool's queue is full (ModelConfig.max_queued_requests, 64 by
default on top of max_ongoing_requests=8 per replica), a request fails fast with UNAVAILABLE, reason
POOL_AT_CAPACITY and a retry hint, instead of queueing until its deadline; it charges nothing."""

from __future__ import annotations

import time

import grpc

from inference.config import ModelConfig
from inference.pricing import generation_cost
from protos.atelier.v1 import control_plane_pb2, inference_pb2
from tests.e2e._status import reason_and_retry_delay

DEFAULTS = ModelConfig(name="tiny-sd")
# More than the replica takes plus the queue allows; accounts stay under their own bound on
# generations in flight, so only the pool can refuse.
ACCOUNTS, PER_ACCOUNT = 10, 8
# Large enough that a batch takes seconds on the CPU: the replica must not drain the queue while the
# requests are still arriving through the gateway (at the default 64x64 a batch of 8 takes ~1.5 s, and
# a slow CI machine admitted all 80 that way).
SIZE = 128


def test_a_full_pool_sheds_load_with_unavailable_and_charges_nothing(
    inference, control_plane, operator_metadata, make_account, balance_of
) -> None:
    assert DEFAULTS.max_ongoing_requests + DEFAULTS.max_queued_requests < ACCOUNTS * PER_ACCOUNT
    accounts = [make_account(100) for _ in range(ACCOUNTS)]
    calls = [
        inference.Generate.future(
            inference_pb2.GenerateRequest(
                account_id=account, prompt="a queue", steps=DEFAULTS.max_steps, width=SIZE, height=SIZE
            ),
            metadata=operator_metadata,
            timeout=300,
        )
        for account in accounts
        for _ in range(PER_ACCOUNT)
    ]
    deadline = time.monotonic() + 120
    while not any(call.done() and call.exception() is not None for call in calls):
        assert time.monotonic() < deadline, "no request was shed while the pool's queue was full"
        time.sleep(0.05)
    for call in calls:
        call.cancel()

    shed = [call.exception() for call in calls if call.done() and not call.cancelled() and call.exception()]
    assert shed
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
