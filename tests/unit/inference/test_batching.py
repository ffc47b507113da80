"""BatchScheduler: compatible requests share a pipeline call, incompatible ones never do, and each
image is the one its request gets alone."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Sequence

import grpc
import numpy as np
import PIL.Image
import pytest

from inference.backends import EagerBackend, GenerationCancelled, GenerationParams, LatentsCallback, StepCallback
from inference.deployments.batching import BatchScheduler, ModelThread, ProgressCallback
from inference.errors import RequestError
from tests.unit.inference.conftest import _pixels

MakeParams = Callable[..., GenerationParams]


class FakeBackend:
    """Implements the Backend port: records every pipeline call, images are blank, steps are instant
    unless `gate` is cleared (then each step waits for it, as a busy pipeline would)."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[list[GenerationParams]] = []
        self.threads: list[int] = []
        self.steps_run = 0
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def generate(self, request: GenerationParams, on_step: StepCallback | None = None) -> list[PIL.Image.Image]:
        return self.generate_batch([request], on_step)[0]

    def generate_batch(
        self,
        requests: Sequence[GenerationParams],
        on_step: StepCallback | None = None,
        on_latents: LatentsCallback | None = None,
    ) -> list[list[PIL.Image.Image]]:
        self.calls.append(list(requests))
        self.threads.append(threading.get_ident())
        self.started.set()
        steps = requests[0].steps
        for step in range(1, steps + 1):
            if not self.gate.wait(timeout=30):
                raise TimeoutError("test gate never opened")
            self.steps_run += 1
            if on_step is not None and on_step(step, steps) is False:
                raise GenerationCancelled(step, steps)
        return [[PIL.Image.new("RGB", (r.width, r.height)) for _ in range(r.num_images)] for r in requests]


def _run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coroutine, timeout=120))


class TestBatchFormation:
    def test_compatible_requests_arriving_together_share_one_call(self, make_params: MakeParams) -> None:
        backend = FakeBackend()
        sizes: list[int] = []

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=8, on_batch=sizes.append)
            results = await asyncio.gather(
                *(scheduler.run(make_params(seed=seed, prompt=f"p{seed}")) for seed in range(3))
            )
            assert [len(r.pngs) for r in results] == [1, 1, 1]
            assert all(r.batch_images == 3 for r in results)

        _run(scenario())
        assert [[p.seed for p in call] for call in backend.calls] == [[0, 1, 2]]
        assert sizes == [3]

    def test_incompatible_requests_never_share_a_call(self, make_params: MakeParams) -> None:
        backend = FakeBackend()

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=8)
            await asyncio.gather(
                scheduler.run(make_params(width=64)),
                scheduler.run(make_params(width=128)),
                scheduler.run(make_params(steps=4)),
                scheduler.run(make_params(guidance_scale=1.0)),
                scheduler.run(make_params(width=64, seed=9)),
            )

        _run(scenario())
        keys = [{(p.width, p.steps, p.guidance_scale) for p in call} for call in backend.calls]
        assert all(len(key) == 1 for key in keys)
        assert sorted(len(call) for call in backend.calls) == [1, 1, 1, 2]

    def test_batch_takes_at_most_max_images_and_a_big_request_runs_alone(self, make_params: MakeParams) -> None:
        backend = FakeBackend()

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=4)
            await asyncio.gather(
                scheduler.run(make_params(num_images=3)),
                scheduler.run(make_params(num_images=2)),
                scheduler.run(make_params(num_images=6)),
                scheduler.run(make_params(num_images=1)),
            )

        _run(scenario())
        # In arrival order: 3 + 2 > 4, so 3 goes alone; 6 > 4 runs alone; nothing overtakes.
        assert [[p.num_images for p in call] for call in backend.calls] == [[3], [2], [6], [1]]

    def test_requests_arriving_while_the_pipeline_is_busy_form_the_next_batch(self, make_params: MakeParams) -> None:
        backend = FakeBackend()
        backend.gate.clear()

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=8)
            first = asyncio.ensure_future(scheduler.run(make_params(seed=0)))
            await asyncio.to_thread(backend.started.wait, 30)
            later = [asyncio.ensure_future(scheduler.run(make_params(seed=s))) for s in (1, 2, 3)]
            await asyncio.sleep(0.05)
            backend.gate.set()
            await asyncio.gather(first, *later)

        _run(scenario())
        assert [[p.seed for p in call] for call in backend.calls] == [[0], [1, 2, 3]]

    def test_wait_time_lets_a_batch_fill_on_an_idle_replica(self, make_params: MakeParams) -> None:
        backend = FakeBackend()

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=2, wait_s=30)
            first = asyncio.ensure_future(scheduler.run(make_params(seed=0)))
            await asyncio.sleep(0.1)
            assert not backend.calls, "a batch below max size waits for company"
            # The second request fills the batch: it starts at once, long before the wait time.
            await asyncio.gather(first, scheduler.run(make_params(seed=1)))

        _run(scenario())
        assert [[p.seed for p in call] for call in backend.calls] == [[0, 1]]


class _SlowToEncodeImage(PIL.Image.Image):
    """An image whose PNG encoding waits until `release` is set (or fails after a deadline)."""

    def __init__(self, size: tuple[int, int], release: threading.Event) -> None:
        super().__init__()
        self.im = PIL.Image.new("RGB", size).im
        self._mode, self._size = "RGB", size
        self._release = release

    def save(self, fp, format=None, **params):  # type: ignore[no-untyped-def, override]
        if not self._release.wait(timeout=30):
            raise TimeoutError("the next batch never started while this one was encoded")
        return super().save(fp, format, **params)


class TestModelThread:
    def test_warm_up_and_every_batch_run_on_the_one_model_thread(self, make_params: MakeParams) -> None:
        backend = FakeBackend()
        model_thread = ModelThread()
        warm_up_thread = model_thread.call(threading.get_ident)

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=2, model_thread=model_thread)
            # Two keys and more images than one batch holds: several batches, from several drainers.
            await asyncio.gather(
                *(scheduler.run(make_params(seed=seed, width=64 + 8 * (seed % 2))) for seed in range(6))
            )

        _run(scenario())
        assert len(backend.threads) >= 3
        assert set(backend.threads) == {warm_up_thread}
        assert warm_up_thread != threading.get_ident()

    def test_next_batch_starts_while_the_previous_one_is_png_encoded(self, make_params: MakeParams) -> None:
        second_started = threading.Event()

        class EncodesSlowly(FakeBackend):
            def generate_batch(self, requests, on_step=None, on_latents=None):  # type: ignore[no-untyped-def]
                if self.calls:  # every call after the first
                    second_started.set()
                images = super().generate_batch(requests, on_step, on_latents)
                if len(self.calls) > 1:
                    return images
                return [[_SlowToEncodeImage((r.width, r.height), second_started)] for r in requests]

        backend = EncodesSlowly()

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=8)
            first = asyncio.ensure_future(scheduler.run(make_params(seed=1)))
            while not backend.calls:
                await asyncio.sleep(0.01)
            # Another key: a batch of its own, which must not wait for the first one's encoding.
            results = await asyncio.gather(first, scheduler.run(make_params(seed=2, width=72)))
            assert all(len(r.pngs) == 1 for r in results)

        _run(scenario())
        assert len(backend.calls) == 2


class TestCancellation:
    def test_request_cancelled_while_queued_never_runs(self, make_params: MakeParams) -> None:
        backend = FakeBackend()
        backend.gate.clear()

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=1)
            first = asyncio.ensure_future(scheduler.run(make_params(seed=0)))
            await asyncio.to_thread(backend.started.wait, 30)
            queued = asyncio.ensure_future(scheduler.run(make_params(seed=1)))
            await asyncio.sleep(0.05)
            queued.cancel()
            backend.gate.set()
            await first
            with pytest.raises(asyncio.CancelledError):
                await queued

        _run(scenario())
        assert [[p.seed for p in call] for call in backend.calls] == [[0]]

    def test_request_whose_deadline_passed_while_queued_never_runs(self, make_params: MakeParams) -> None:
        backend = FakeBackend()
        backend.gate.clear()

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=1)
            first = asyncio.ensure_future(scheduler.run(make_params(seed=0), deadline=time.time() + 60))
            await asyncio.to_thread(backend.started.wait, 30)
            # Queued behind the running batch; its caller's deadline is gone when the batch ends.
            expired = asyncio.ensure_future(scheduler.run(make_params(seed=1), deadline=time.time() - 0.001))
            alive = asyncio.ensure_future(scheduler.run(make_params(seed=2), deadline=time.time() + 60))
            backend.gate.set()
            await first
            with pytest.raises(RequestError) as refused:
                await expired
            assert refused.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "deadline passed" in refused.value.message
            assert len((await alive).pngs) == 1

        _run(scenario())
        assert [[p.seed for p in call] for call in backend.calls] == [[0], [2]]

    def test_one_cancelled_member_does_not_stop_the_others(self, make_params: MakeParams) -> None:
        backend = FakeBackend()
        stop = threading.Event()
        stop_at_step_two = lambda step, total, preview: stop.set() if step == 2 else None  # noqa: E731

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=8)
            cancelled, kept = await asyncio.gather(
                scheduler.run(make_params(seed=0, steps=5), stop_at_step_two, stop),
                scheduler.run(make_params(seed=1, steps=5)),
                return_exceptions=True,
            )
            assert isinstance(cancelled, GenerationCancelled)
            assert not isinstance(kept, BaseException) and len(kept.pngs) == 1

        _run(scenario())
        assert backend.steps_run == 5

    def test_loop_stops_within_a_step_once_every_member_stopped(self, make_params: MakeParams) -> None:
        backend = FakeBackend()
        stops = [threading.Event(), threading.Event()]

        def stopper(index: int) -> ProgressCallback:
            def on_progress(step: int, total: int, preview: bytes | None) -> None:
                if step == 2:
                    stops[index].set()

            return on_progress

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=8)
            outcomes = await asyncio.gather(
                *(scheduler.run(make_params(seed=i, steps=50), stopper(i), stops[i]) for i in range(2)),
                return_exceptions=True,
            )
            assert all(isinstance(o, GenerationCancelled) for o in outcomes)

        _run(scenario())
        assert backend.steps_run == 2


class TestBatchedImagesMatchSingles:
    def test_each_image_of_a_batch_is_the_image_of_its_request_alone(
        self, eager_backend: EagerBackend, make_params: MakeParams
    ) -> None:
        requests = [
            make_params(seed=5, prompt="a fox"),
            make_params(seed=6, prompt="a lighthouse", negative_prompt="blurry", num_images=2),
            make_params(seed=7, prompt="a heron"),
        ]
        alone = [eager_backend.generate(request) for request in requests]
        sizes: list[int] = []

        async def scenario() -> list[list[bytes]]:
            scheduler = BatchScheduler(eager_backend, max_batch_images=8, on_batch=sizes.append)
            results = await asyncio.gather(*(scheduler.run(request) for request in requests))
            return [result.pngs for result in results]

        batched = _run(scenario())
        assert sizes == [4]
        for single_images, batch_pngs in zip(alone, batched, strict=True):
            assert len(single_images) == len(batch_pngs)
            for single, png in zip(single_images, batch_pngs, strict=True):
                image = PIL.Image.open(io.BytesIO(png))
                # CPU kernels round differently at different batch sizes: at most one level in 255.
                assert np.abs(_pixels(image) - _pixels(single)).max() <= 1

    def test_mixed_keys_are_refused_by_the_backend(self, eager_backend: EagerBackend, make_params: MakeParams) -> None:
        with pytest.raises(ValueError, match="batch_key"):
            eager_backend.generate_batch([make_params(width=64), make_params(width=128)])


class TestPreviews:
    def test_previews_come_every_n_steps_for_the_requests_that_ask(
        self, eager_backend: EagerBackend, make_params: MakeParams
    ) -> None:
        seen: dict[int, list[tuple[int, bytes | None]]] = {0: [], 1: []}

        def recorder(index: int) -> ProgressCallback:
            return lambda step, total, preview: seen[index].append((step, preview))

        async def scenario() -> None:
            scheduler = BatchScheduler(eager_backend, max_batch_images=8)
            await asyncio.gather(
                scheduler.run(make_params(seed=1, steps=4), recorder(0), preview_every=2),
                scheduler.run(make_params(seed=2, steps=4, num_images=2), recorder(1)),
            )

        _run(scenario())
        assert [step for step, _ in seen[0]] == [1, 2, 3, 4]
        assert [step for step, preview in seen[0] if preview is not None] == [2, 4]
        assert all(preview is None for _, preview in seen[1])
        preview = PIL.Image.open(io.BytesIO(seen[0][1][1] or b""))
        assert preview.format == "PNG" and preview.size == (8, 8)  # latent resolution of a 64x64 image


class TestPipelineRunReports:
    """`on_pipeline_run` feeds the replica's busy-time counter and time-per-step histogram."""

    def test_every_call_reports_its_busy_time_steps_and_denoise_time(self, make_params: MakeParams) -> None:
        backend = FakeBackend()
        runs: list[tuple[float, int, float | None]] = []

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=8, on_pipeline_run=lambda *run: runs.append(run))
            await asyncio.gather(
                scheduler.run(make_params(seed=0, steps=3)), scheduler.run(make_params(seed=1, steps=3))
            )
            await scheduler.run(make_params(steps=5, width=128))

        _run(scenario())
        # One report per pipeline call (the two compatible requests shared one), with the steps it ran.
        assert [steps for _, steps, _ in runs] == [3, 5]
        for busy_s, _, denoise_s in runs:
            assert denoise_s is not None and 0 <= denoise_s <= busy_s

    def test_a_stopped_call_reports_its_busy_time_and_steps_but_no_denoise_time(self, make_params: MakeParams) -> None:
        backend = FakeBackend()
        runs: list[tuple[float, int, float | None]] = []
        stop = threading.Event()

        def stop_at_step_two(step: int, total: int, preview: bytes | None) -> None:
            if step == 2:
                stop.set()

        async def scenario() -> None:
            scheduler = BatchScheduler(backend, max_batch_images=8, on_pipeline_run=lambda *run: runs.append(run))
            with pytest.raises(GenerationCancelled):
                await scheduler.run(make_params(steps=50), stop_at_step_two, stop)

        _run(scenario())
        ((busy_s, steps, denoise_s),) = runs
        assert busy_s > 0 and steps == 2 and denoise_s is None
