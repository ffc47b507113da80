"""Batching, cancellation and deadlines through the real gRPC API: batched images are the images of requests
run alone, and a cancelled stream or a passed deadline stops the replica's denoising loop and releases the
reservation."""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import PIL.Image
import pytest

from protos.atelier.v1 import inference_pb2
from tests.e2e._metrics import wait_for_requests_counted
from tests.e2e._status import bad_request_fields

MODEL_DEPLOYMENT = "DiffusionModel-tiny-sd"
# ATELIER_CANCEL_REPEAT=10 runs the cancellation test ten times (to check it is robust to timing).
CANCEL_REPEAT = int(os.environ.get("ATELIER_CANCEL_REPEAT", "1"))


@pytest.fixture(scope="module")
def model_stats(cluster):  # type: ignore[no-untyped-def]
    """Calls `DiffusionModel.stats` on the tiny-sd pool's replica through a Serve handle."""
    import ray
    from ray import serve

    ray.init(address=cluster.ray_address, logging_level="WARNING", log_to_driver=False)
    try:
        handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name="atelier")
        yield lambda: handle.stats.remote().result(timeout_s=60)
    finally:
        ray.shutdown()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(png)), dtype=np.int16)


def test_concurrent_compatible_requests_get_the_images_they_get_alone(
    inference, operator_metadata, make_account
) -> None:
    account_id = make_account(100)

    def generate(seed: int) -> bytes:
        request = inference_pb2.GenerateRequest(account_id=account_id, prompt=f"a fox {seed}", steps=4, seed=seed)
        return inference.Generate(request, metadata=operator_metadata, timeout=120).images[0].png

    seeds = list(range(500, 506))
    alone = [generate(seed) for seed in seeds]
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(generate, seeds))
    for single, batched in zip(alone, together, strict=True):
        # CPU kernels round differently at different batch sizes: at most one level in 255.
        assert np.abs(_pixels(single) - _pixels(batched)).max() <= 1
    assert len({png for png in together}) == len(seeds)


def test_stream_sends_previews_every_n_steps(inference, operator_metadata, make_account) -> None:
    account_id = make_account(10)
    request = inference_pb2.GenerateRequest(
        account_id=account_id, prompt="a fox", steps=6, seed=3, preview_every_n_steps=3
    )
    messages = list(inference.GenerateStream(request, metadata=operator_metadata, timeout=120))
    progress = [m.progress for m in messages if m.HasField("progress")]
    assert [p.step for p in progress if p.preview_png] == [3, 6]
    preview = PIL.Image.open(io.BytesIO(progress[2].preview_png))
    assert preview.format == "PNG" and preview.size == (8, 8)
    assert messages[-1].HasField("result")


@pytest.mark.parametrize("attempt", range(CANCEL_REPEAT))
def test_cancelled_stream_stops_the_replica_and_releases_the_reservation(
    inference, operator_metadata, make_account, balance_of, model_stats, attempt
) -> None:
    """The proxy-side half (a cancel arriving while the proxy is blocked writing) is pinned down in
    tests/unit/inference/test_grpc_proxy.py, where the race can be forced."""
    account_id = make_account(100)
    total_steps = 50
    request = inference_pb2.GenerateRequest(
        account_id=account_id, prompt="a fox", steps=total_steps, width=512, height=512, num_images=2, seed=attempt
    )
    before = model_stats()
    metadata = (*operator_metadata, ("request_id", f"cancel-{uuid.uuid4().hex[:12]}"))
    stream = inference.GenerateStream(request, metadata=metadata, timeout=300)
    seen: list[int] = []
    for message in _messages(stream):
        assert message.HasField("progress"), "the stream ended before it could be cancelled"
        seen.append(message.progress.step)
        if len(seen) == 2:
            stream.cancel()
            break
    assert stream.code() == grpc.StatusCode.CANCELLED

    # The replica's loop must stop: wait until its scheduler is idle, then count the steps it ran.
    stats = _wait_until_idle(model_stats)
    steps_run = stats.steps_run - before.steps_run
    assert stats.batches_stopped == before.batches_stopped + 1, "the batch ended early, not by finishing"
    assert steps_run < total_steps, f"the replica ran {steps_run} of {total_steps} steps after the cancel"

    deadline = time.monotonic() + 60
    while (balance := balance_of(account_id)).held and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (balance.total, balance.held) == (100, 0), "a cancelled request is charged nothing"


@pytest.mark.parametrize("method", ["Generate", "GenerateStream"])
def test_a_passed_deadline_stops_the_replica_and_releases_the_reservation(
    cluster, inference, operator_metadata, make_account, balance_of, model_stats, method
) -> None:
    account_id = make_account(100)
    total_steps = 50
    request = inference_pb2.GenerateRequest(
        account_id=account_id, prompt="a fox", steps=total_steps, width=512, height=512, num_images=2, seed=9
    )
    before = model_stats()
    # A deadline well inside the generation (50 steps at 512x512 take several seconds on the CPU).
    with pytest.raises(grpc.RpcError) as raised:
        if method == "Generate":
            inference.Generate(request, metadata=operator_metadata, timeout=2.0)
        else:
            list(inference.GenerateStream(request, metadata=operator_metadata, timeout=2.0))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The gateway knows the caller's deadline (the proxy carries it): counted as such, not as CANCELLED.
    wait_for_requests_counted(cluster.ray_metrics_url, method, "DEADLINE_EXCEEDED")
    stats = _wait_until_idle(model_stats)
    assert stats.batches_stopped == before.batches_stopped + 1, "the batch ended early, not by finishing"
    assert stats.steps_run - before.steps_run < total_steps, "the replica kept generating past the deadline"

    deadline = time.monotonic() + 60
    while (balance := balance_of(account_id)).held and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (balance.total, balance.held) == (100, 0), "a request past its deadline is charged nothing"


def test_a_failed_stream_keeps_its_rich_error_details(inference, operator_metadata, make_account) -> None:
    """Serve's proxy drops a failed stream's trailing metadata; the proxy patch puts it back."""
    request = inference_pb2.GenerateRequest(account_id=make_account(100), prompt="a fox", steps=4, width=65)
    with pytest.raises(grpc.RpcError) as raised:
        list(inference.GenerateStream(request, metadata=operator_metadata, timeout=60))
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert bad_request_fields(error) == ["width"]
    assert dict(error.trailing_metadata() or ()).get("request_id")


def _wait_until_idle(model_stats):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 120
    while (stats := model_stats()).running or stats.queued:
        assert time.monotonic() < deadline, "the replica kept generating after the caller went away"
        time.sleep(0.1)
    return stats


def _messages(stream) -> Iterator[inference_pb2.GenerateStreamResponse]:  # type: ignore[no-untyped-def]
    # A watchdog, so a stream that never yields fails the test instead of hanging it.
    timer = threading.Timer(240, stream.cancel)
    timer.start()
    try:
        yield from stream
    finally:
        timer.cancel()
