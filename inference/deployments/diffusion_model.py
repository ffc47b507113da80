"""`DiffusionModel`: one replica of a model pool, running a pipeline through its backend."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import torch
from ray import serve

from inference.backends import GenerationParams, create_backend
from inference.config import ModelConfig
from inference.metrics import ModelMetrics
from inference.models import ModelSource, load_pipeline

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Speed over size: PNGs go straight to the control plane, and level 1 is ~5x faster than 6.
_PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class StepProgress:
    """Sent after every denoising step of a streamed generation."""

    step: int
    total_steps: int
    elapsed_ms: float


@dataclass(frozen=True)
class GenerationResult:
    """The images of one request, PNG-encoded, with where the time went."""

    pngs: list[bytes]
    scheduler: str
    backend: str
    queue_ms: float
    """Waiting for this replica's pipeline to be free."""
    denoise_ms: float
    """From the start of the pipeline call to the end of the last denoising step."""
    decode_ms: float
    """VAE decode and PNG encoding after the last step."""


@serve.deployment
class DiffusionModel:
    """Loads one model and generates with it, one request at a time per replica."""

    def __init__(self, model: ModelConfig, cache_dir: Path) -> None:
        if model.device == "cpu":
            # As many compute threads as CPUs Ray reserved for this replica: more would only
            # contend with the replicas beside it.
            torch.set_num_threads(max(1, int(model.num_cpus)))
        source = ModelSource.from_setting(model.source, cache_dir)
        pipeline = load_pipeline(source, model.device, _DTYPES[model.dtype])
        self._backend = create_backend(model.backend, pipeline)
        self._scheduler = type(pipeline.scheduler).__name__
        # One pipeline call at a time: the pipeline keeps per-call state, and on a CPU or a
        # single GPU concurrent calls only slow each other down.
        self._busy = asyncio.Lock()
        self._metrics = ModelMetrics()
        self._model_name = model.name
        logger.info("model_loaded model=%s backend=%s device=%s", model.name, model.backend, model.device)

    async def generate(self, params: GenerationParams) -> GenerationResult:
        """Generates the request's images; cancelling the call stops the denoising loop."""
        result: GenerationResult | None = None
        async for event in self._run(params, report_steps=False):
            if isinstance(event, GenerationResult):
                result = event
        if result is None:  # _run always ends with a result or raises
            raise RuntimeError("generation produced no result")
        return result

    async def generate_stream(self, params: GenerationParams) -> AsyncIterator[StepProgress | GenerationResult]:
        """Yields a `StepProgress` after every step, then the `GenerationResult`.

        Closing the stream (the caller went away) stops the denoising loop within one step.
        """
        async for event in self._run(params, report_steps=True):
            yield event

    async def _run(
        self, params: GenerationParams, *, report_steps: bool
    ) -> AsyncIterator[StepProgress | GenerationResult]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StepProgress | GenerationResult | BaseException] = asyncio.Queue()
        stop = threading.Event()
        queued_at = time.perf_counter()
        async with self._busy:
            started_at = time.perf_counter()
            last_step_at = started_at

            def on_step(step: int, total_steps: int) -> bool:
                nonlocal last_step_at
                last_step_at = time.perf_counter()
                if report_steps:
                    progress = StepProgress(step, total_steps, (last_step_at - started_at) * 1000)
                    loop.call_soon_threadsafe(events.put_nowait, progress)
                return not stop.is_set()

            def run() -> None:
                try:
                    images = self._backend.generate(params, on_step)
                    pngs = [_encode_png(image) for image in images]
                    finished_at = time.perf_counter()
                    result = GenerationResult(
                        pngs=pngs,
                        scheduler=self._scheduler,
                        backend=self._backend.name,
                        queue_ms=(started_at - queued_at) * 1000,
                        denoise_ms=(last_step_at - started_at) * 1000,
                        decode_ms=(finished_at - last_step_at) * 1000,
                    )
                    loop.call_soon_threadsafe(events.put_nowait, result)
                except BaseException as exc:  # handed to the awaiting coroutine, re-raised there
                    loop.call_soon_threadsafe(events.put_nowait, exc)

            self._metrics.batch_size.observe(params.num_images, tags={"model": self._model_name})
            worker = loop.run_in_executor(None, run)
            finished = False
            try:
                while True:
                    event = await events.get()
                    if isinstance(event, BaseException):
                        raise event
                    yield event
                    if isinstance(event, GenerationResult):
                        finished = True
                        return
            finally:
                # Reached on success, on error, and when the caller cancels or closes the stream:
                # the backend sees `stop` at its next step and ends the loop there. The lock is
                # held until the thread has really stopped, so the slot is free only then.
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(worker)
                if not finished:
                    logger.info("generation_stopped steps_total=%d", params.steps)

    def check_health(self) -> None:
        """Serve calls this periodically; a replica whose backend is gone is restarted."""
        if self._backend is None:
            raise RuntimeError("backend not loaded")


def _encode_png(image) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
