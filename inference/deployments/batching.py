"""Batches compatible requests into one pipeline call, per replica.

Requests are queued by `batch_key` (mode, size, steps, guidance scale, edit strength): only requests
with the same key share a pipeline call, so incompatible requests never wait for each other's batch to
fill; edits with different init images and masks do share one (each image row has its own). The
pipeline runs one batch at a time; while it is busy, requests pile up in their key's queue and the
next batch of that key takes as many as fit (up to `max_batch_images` images). With a wait time
above zero, a batch also waits that long for more requests before it starts, even when the pipeline
is idle; with zero (the default) a lone request on an idle replica starts at once.

Every batch runs on the replica's one model thread (`ModelThread`), which also ran its warm-up:
`torch.compile` with CUDA graphs keeps its graph state per thread, so a batch on another thread would
fail (or recapture). The images are PNG-encoded after the pipeline is released, off that thread, so the
next batch does not wait for the encoding (30 ms at 512x512, 110 ms at 1024x1024). A model's output
classifier judges every image of a batch in one pass on that thread too, right after the pipeline call (on
the replica's device, before the images leave it).

Each request has its own stop flag: a request cancelled before its batch starts leaves the queue; one
cancelled in a running batch stops getting progress, and the denoising loop stops at the next step
once every request of the batch has been cancelled. A request whose caller's deadline passed while it
was queued leaves the queue the same way (DEADLINE_EXCEEDED), even before the cancellation reaches
the replica: under overload, the batch slots go to requests someone still waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import PIL.Image
import torch

from inference.backends import Backend, BatchKey, GenerationCancelled, GenerationParams, batch_key
from inference.deadline import has_expired
from inference.deployments.preview import latent_preview_png
from inference.errors import RequestError
from inference.generation import OutputVerdict
from inference.safety.base import OutputClassifier

logger = logging.getLogger(__name__)

# Speed over size: PNGs go straight to the control plane, and level 1 is ~5x faster than 6.
_PNG_COMPRESS_LEVEL = 1


_T = TypeVar("_T")


class ModelThread:
    """The one thread that runs a replica's model work: loading, warm-up and every batch.

    CUDA graphs captured by `torch.compile(mode="reduce-overhead")` live in thread-local state (torch
    2.11 asserts ``_is_key_in_tls`` when a graph captured on one thread is replayed on another), and a
    CUDA stream is current per thread: so everything that touches the model runs here, in order.
    """

    def __init__(self, name: str = "model") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"atelier-{name}")

    def call(self, function: Callable[[], _T]) -> _T:
        """Runs `function` on the model thread and waits for it (from any thread but that one)."""
        return self._executor.submit(function).result()

    async def run(self, function: Callable[[], _T]) -> _T:
        """Runs `function` on the model thread without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def shutdown(self) -> None:
        """Lets the thread end once its queued work is done."""
        self._executor.shutdown(wait=False)


class _StepTimer:
    """Timestamps of a batch (start, each step's end, end), on the device's clock.

    On a GPU the host runs ahead of the kernels it queued (far ahead with CUDA graphs): host time at a
    step's callback says when the step was queued, not done. There each mark is a CUDA event on the
    current stream, and `wait` blocks until the device reached it; on a CPU marks are host times.
    """

    def __init__(self, cuda: bool) -> None:
        self._cuda = cuda

    def mark(self) -> float | torch.cuda.Event:
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def wait(self, mark: float | torch.cuda.Event) -> None:
        if isinstance(mark, torch.cuda.Event):
            mark.synchronize()

    def elapsed_ms(self, start: float | torch.cuda.Event, end: float | torch.cuda.Event) -> float:
        if isinstance(start, torch.cuda.Event) and isinstance(end, torch.cuda.Event):
            end.synchronize()
            return float(start.elapsed_time(end))
        return (float(end) - float(start)) * 1000  # type: ignore[arg-type]


@dataclass(frozen=True)
class BatchedResult:
    """One request's images from a batch, PNG-encoded, with where its time went."""

    pngs: list[bytes]
    batch_images: int
    """Images in the pipeline call this request was part of (its own included)."""
    queue_ms: float
    """From submission to the start of its batch's pipeline call."""
    denoise_ms: float
    """From the start of the pipeline call to the end of the last denoising step."""
    decode_ms: float
    """VAE decode and PNG encoding after the last step."""
    verdicts: tuple[OutputVerdict, ...] = ()
    """The output classifier's verdict on each of `pngs` (none without a classifier)."""
    scan_ms: float = 0.0
    """The output classifier's pass over the whole batch."""


@dataclass(frozen=True)
class SchedulerStats:
    """What a replica's scheduler has done since it started (for tests and debugging)."""

    steps_run: int
    """Denoising steps run, summed over pipeline calls."""
    batches_run: int
    """Pipeline calls started."""
    batches_stopped: int
    """Pipeline calls that ended early because every request in them was cancelled."""
    running: bool
    """Whether a pipeline call is running now."""
    queued: int
    """Requests waiting for their batch to start."""


PipelineRunCallback = Callable[[float, int, float | None], None]
"""Called as ``on_pipeline_run(busy_s, steps, denoise_s)`` after every pipeline call, failed or stopped ones
too: the seconds the pipeline was busy, the denoising steps completed, and the seconds from the call's start
to its last step's end (None when the call did not complete)."""

ProgressCallback = Callable[[int, int, bytes | None], None]
"""Called as ``on_progress(step, total_steps, preview_png)`` from the worker thread after every step of
the request's batch; ``preview_png`` is set on the steps the request asked previews for."""


@dataclass(frozen=True)
class _BatchOutcome:
    """What one pipeline call made: each request's images and verdicts, with where the time went."""

    outputs: list[list[PIL.Image.Image]]
    verdicts: list[tuple[OutputVerdict, ...]]
    images: int
    """Images in the call."""
    denoise_ms: float
    """From the call's start to its last step's end (device time on a GPU)."""
    decode_ms: float
    """From the last step's end to the images."""
    scan_ms: float
    """The output classifier's pass over the batch."""


@dataclass
class _Pending:
    params: GenerationParams
    on_progress: ProgressCallback | None
    stop: threading.Event
    future: asyncio.Future[BatchedResult]
    preview_every: int = 0
    deadline: float | None = None
    """The caller's deadline, seconds since the epoch (None: none)."""
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0
    """When its batch's pipeline call started (``time.perf_counter``)."""


class BatchScheduler:
    """Runs requests on one backend, batching those with the same `batch_key`."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch_images: int,
        wait_s: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
        model_thread: ModelThread | None = None,
        cuda_timing: bool = False,
        on_pipeline_run: PipelineRunCallback | None = None,
        classifier: OutputClassifier | None = None,
    ) -> None:
        """Schedule requests on `backend`.

        Args:
            backend: Runs the pipeline; called from a worker thread, one batch at a time.
            max_batch_images: Most images in one pipeline call, >= 1 (1 turns batching off). A request
                with more images than this runs alone.
            wait_s: How long a batch waits for more requests before it starts, >= 0 seconds.
            on_batch: Called with the number of images of every pipeline call (for metrics).
            model_thread: The thread every pipeline call runs on (the replica's, which warmed the
                backend up); a new one when None.
            cuda_timing: Time steps with CUDA events (the backend runs on a GPU); progress callbacks
                then come once the device finished the step.
            on_pipeline_run: Called after every pipeline call (for metrics; see `PipelineRunCallback`).
            classifier: Judges every image of each batch, in one pass after the pipeline call; None: no
                verdicts.
        """
        if max_batch_images < 1:
            raise ValueError(f"max_batch_images must be >= 1, got {max_batch_images}")
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s}")
        self._backend = backend
        self._max_images = max_batch_images
        self._wait_s = wait_s
        self._on_batch = on_batch
        self._on_pipeline_run = on_pipeline_run
        self._model_thread = model_thread or ModelThread()
        self._timer = _StepTimer(cuda_timing)
        self._classifier = classifier
        # Encodings of finished batches, running after the pipeline was released (kept referenced).
        self._deliveries: set[asyncio.Task[None]] = set()
        self._queues: dict[BatchKey, deque[_Pending]] = {}
        self._arrived: dict[BatchKey, asyncio.Event] = {}
        self._drainers: dict[BatchKey, asyncio.Task[None]] = {}
        # One pipeline call at a time: the pipeline keeps per-call state, and on a CPU or a single GPU
        # concurrent calls only slow each other down. asyncio.Lock is FIFO, so keys take turns.
        self._pipeline = asyncio.Lock()
        self._steps_run = 0
        self._batches_run = 0
        self._batches_stopped = 0
        self._running = False

    def stats(self) -> SchedulerStats:
        """A snapshot of the counters (see `SchedulerStats`)."""
        return SchedulerStats(
            steps_run=self._steps_run,
            batches_run=self._batches_run,
            batches_stopped=self._batches_stopped,
            running=self._running,
            queued=sum(len(queue) for queue in self._queues.values()),
        )

    async def run(
        self,
        params: GenerationParams,
        on_progress: ProgressCallback | None = None,
        stop: threading.Event | None = None,
        *,
        preview_every: int = 0,
        deadline: float | None = None,
    ) -> BatchedResult:
        """Generates one request's images, batched with compatible ones.

        Args:
            params: The request.
            on_progress: Called from the worker thread after every step of the request's batch (see
                `ProgressCallback`); set `stop` to cancel.
            stop: Set it to cancel the request; the caller being cancelled sets it too.
            preview_every: Pass a PNG preview of the request's first image to `on_progress` every this
                many steps; 0 for none.
            deadline: The caller's deadline, seconds since the epoch; once it passes, the request
                no longer starts.

        Raises:
            GenerationCancelled: The request was stopped through `stop`.
            RequestError: DEADLINE_EXCEEDED, the deadline passed before the request's batch started.
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(
            params, on_progress, stop or threading.Event(), loop.create_future(), preview_every, deadline
        )
        # Retrieves the outcome even when the caller has gone, so asyncio logs no "never retrieved".
        pending.future.add_done_callback(lambda done: done.cancelled() or done.exception())
        key = batch_key(params)
        self._queues.setdefault(key, deque()).append(pending)
        self._arrived.setdefault(key, asyncio.Event()).set()
        drainer = self._drainers.get(key)
        if drainer is None or drainer.done():
            self._drainers[key] = asyncio.ensure_future(self._drain(key))
        try:
            return await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            pending.stop.set()
            raise

    async def _drain(self, key: BatchKey) -> None:
        queue = self._queues[key]
        arrived = self._arrived[key]
        while queue:
            if self._wait_s > 0:
                deadline = queue[0].queued_at + self._wait_s
                while _images(queue) < self._max_images and (remaining := deadline - time.perf_counter()) > 0:
                    arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(arrived.wait(), remaining)
            async with self._pipeline:
                batch = self._take_batch(queue)
                outcome = await self._run_batch(batch) if batch else None
            if outcome is not None:
                # Encoded with the pipeline released: the next batch (of any key) starts meanwhile.
                delivery = asyncio.ensure_future(self._deliver(batch, outcome))
                self._deliveries.add(delivery)
                delivery.add_done_callback(self._deliveries.discard)
        del self._queues[key], self._arrived[key], self._drainers[key]

    def _take_batch(self, queue: deque[_Pending]) -> list[_Pending]:
        batch: list[_Pending] = []
        images = 0
        now = time.time()
        while queue:
            pending = queue[0]
            if pending.stop.is_set():  # cancelled while queued: never starts
                queue.popleft()
                if not pending.future.done():
                    pending.future.set_exception(GenerationCancelled(0, pending.params.denoising_steps))
                continue
            if has_expired(pending.deadline, now):  # nobody waits for it any more: never starts
                queue.popleft()
                pending.stop.set()
                if not pending.future.done():
                    pending.future.set_exception(_deadline_passed_in_queue())
                continue
            if batch and images + pending.params.num_images > self._max_images:
                break
            batch.append(queue.popleft())
            images += pending.params.num_images
        return batch

    async def _run_batch(self, batch: list[_Pending]) -> _BatchOutcome | None:
        """Runs `batch`'s pipeline call (and its images' classification) on the model thread; None when it
        failed (its futures are set)."""
        images = sum(p.params.num_images for p in batch)
        if self._on_batch is not None:
            self._on_batch(images)
        started_at = time.perf_counter()
        for pending in batch:
            pending.started_at = started_at
        timer = self._timer
        marks: dict[str, float | torch.cuda.Event] = {}
        listening = any(p.on_progress is not None for p in batch)
        # Row of each request's first image in the batch's latents.
        first_rows = [sum(p.params.num_images for p in batch[:index]) for index in range(len(batch))]
        previews: dict[int, bytes] = {}

        def on_latents(step: int, latents: torch.Tensor) -> None:
            previews.clear()
            for index, pending in enumerate(batch):
                if pending.preview_every and step % pending.preview_every == 0 and not pending.stop.is_set():
                    previews[index] = latent_preview_png(latents[first_rows[index]])

        steps_done = 0

        def on_step(step: int, total_steps: int) -> bool:
            nonlocal steps_done
            steps_done += 1
            marks["last_step"] = timer.mark()
            if listening:
                # Progress says a step is done when the device has done it (a no-op on a CPU).
                timer.wait(marks["last_step"])
            self._steps_run += 1  # only the model thread writes it
            for index, pending in enumerate(batch):
                if pending.on_progress is not None and not pending.stop.is_set():
                    pending.on_progress(step, total_steps, previews.get(index))
            return not all(pending.stop.is_set() for pending in batch)

        wants_previews = any(p.preview_every for p in batch)

        def generate() -> _BatchOutcome:
            marks["start"] = timer.mark()
            outputs = self._backend.generate_batch(
                [p.params for p in batch], on_step, on_latents if wants_previews else None
            )
            end = timer.mark()
            last_step = marks.get("last_step", marks["start"])
            denoise_ms, decode_ms = timer.elapsed_ms(marks["start"], last_step), timer.elapsed_ms(last_step, end)
            verdicts, scan_ms = self._classify(outputs)
            return _BatchOutcome(outputs, verdicts, images, denoise_ms, decode_ms, scan_ms)

        self._batches_run += 1
        self._running = True
        completed_denoise_s: float | None = None
        try:
            outcome = await self._model_thread.run(generate)
            completed_denoise_s = outcome.denoise_ms / 1000
        except BaseException as exc:
            if isinstance(exc, GenerationCancelled):
                self._batches_stopped += 1
                logger.info(
                    "batch_stopped images=%d completed_steps=%d total_steps=%d",
                    images,
                    exc.completed_steps,
                    exc.total_steps,
                )
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return None
        finally:
            self._running = False
            if self._on_pipeline_run is not None:
                self._on_pipeline_run(time.perf_counter() - started_at, steps_done, completed_denoise_s)
        return outcome

    def _classify(self, outputs: list[list[PIL.Image.Image]]) -> tuple[list[tuple[OutputVerdict, ...]], float]:
        """Every image of the batch through the classifier in one pass: each request's verdicts, and the
        pass's milliseconds (it ends with the verdicts on the host, so this is device time too)."""
        if self._classifier is None:
            return [() for _ in outputs], 0.0
        started = time.perf_counter()
        flat = self._classifier.classify([image for output in outputs for image in output])
        scan_ms = (time.perf_counter() - started) * 1000
        verdicts: list[tuple[OutputVerdict, ...]] = []
        for output in outputs:
            verdicts.append(tuple(flat[: len(output)]))
            flat = flat[len(output) :]
        return verdicts, scan_ms

    async def _deliver(self, batch: list[_Pending], outcome: _BatchOutcome) -> None:
        outputs = outcome.outputs
        encode_started = time.perf_counter()
        try:
            pngs = await asyncio.to_thread(lambda: [[_encode_png(image) for image in output] for output in outputs])
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        encode_ms = (time.perf_counter() - encode_started) * 1000
        for pending, request_pngs, verdicts in zip(batch, pngs, outcome.verdicts, strict=True):
            if pending.future.done():
                continue
            if pending.stop.is_set():
                steps = pending.params.denoising_steps
                pending.future.set_exception(GenerationCancelled(steps, steps))
                continue
            pending.future.set_result(
                BatchedResult(
                    pngs=request_pngs,
                    batch_images=outcome.images,
                    queue_ms=(pending.started_at - pending.queued_at) * 1000,
                    denoise_ms=outcome.denoise_ms,
                    decode_ms=outcome.decode_ms + encode_ms,
                    verdicts=verdicts,
                    scan_ms=outcome.scan_ms,
                )
            )


def _deadline_passed_in_queue() -> RequestError:
    return RequestError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "the request's deadline passed while it waited for the model; nothing was charged: "
        "allow more time or retry later",
    )


def _images(queue: deque[_Pending]) -> int:
    return sum(p.params.num_images for p in queue if not p.stop.is_set())


def _encode_png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


__all__ = ["BatchScheduler", "BatchedResult", "ModelThread", "ProgressCallback", "SchedulerStats"]
