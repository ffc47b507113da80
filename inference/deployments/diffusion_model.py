"""`DiffusionModel`: one replica of a model pool, running a pipeline through its backend."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import torch
from ray import serve

from inference.backends import Backend, GenerationParams
from inference.config import ModelConfig, PoolConfig
from inference.deployments.batching import BatchScheduler, ModelThread, SchedulerStats
from inference.deployments.loading import load_backend, load_classifier, warm_up
from inference.generation import GenerationResult, StepProgress
from inference.metrics import GAUGE_REFRESH_S, ModelMetrics
from inference.safety import OutputClassifier

logger = logging.getLogger(__name__)


class _LoadedModel:
    """One model loaded in a replica: its backend, its output classifier, and the scheduler batching its
    requests (which runs the classifier over every batch's images)."""

    def __init__(
        self,
        model: ModelConfig,
        cache_dir: Path,
        metrics: ModelMetrics,
        on_unload: Callable[[str], None],
        model_thread: ModelThread,
    ) -> None:
        self.name = model.name
        self._on_unload = on_unload

        def warmed_backend() -> tuple[Backend, OutputClassifier]:
            backend = load_backend(model, cache_dir)
            warm_up(
                backend,
                model,
                lambda bucket, seconds: metrics.warm_up_seconds.set(
                    seconds, tags={"model": model.name, "bucket": bucket}
                ),
            )
            return backend, load_classifier(model)

        # Loading, compiling and warming up on the thread that will run every batch (see ModelThread);
        # the replica's constructor returns, and so reports healthy, only once every bucket is warm.
        self.backend, classifier = model_thread.call(warmed_backend)
        self.scheduler_name = type(self.backend.pipeline.scheduler).__name__
        self.batches = BatchScheduler(
            self.backend,
            max_batch_images=model.max_batch_size,
            wait_s=model.batch_wait_timeout_ms / 1000,
            on_batch=lambda images: metrics.batch_size.observe(images, tags={"model": model.name}),
            model_thread=model_thread,
            cuda_timing=model.device == "cuda",
            on_pipeline_run=lambda busy_s, steps, denoise_s: metrics.observe_pipeline_run(
                model.name, busy_s, steps, denoise_s
            ),
            classifier=classifier,
        )
        logger.info("model_loaded model=%s backend=%s device=%s", model.name, model.backend, model.device)

    def __del__(self) -> None:
        # Serve's multiplexer calls this when it evicts the model (least recently used).
        self._on_unload(self.name)


@serve.deployment
class DiffusionModel:
    """One replica of a pool: generates with the pool's models, batching compatible requests.

    A pool of one model loads it at start-up. A pool of several loads them on demand, by the
    multiplexed model id the Gateway sets, keeping at most `max_models_per_replica` and evicting the
    least recently used (Serve routes a model's requests to replicas that have it loaded).
    """

    def __init__(self, models: Sequence[ModelConfig], pool: PoolConfig, cache_dir: Path) -> None:
        lead = models[0]
        if lead.device == "cpu":
            # As many compute threads as CPUs Ray reserved for this replica: more would only
            # contend with the replicas beside it.
            torch.set_num_threads(max(1, int(lead.num_cpus)))
        self._models = {model.name: model for model in models}
        self._default = lead.name
        self._cache_dir = cache_dir
        self._metrics = ModelMetrics()
        # One thread runs all of this replica's model work, whichever model (see ModelThread).
        self._model_thread = ModelThread(pool.name)
        self._loaded: dict[str, _LoadedModel] = {}
        if len(models) == 1:
            self._loaded[lead.name] = _LoadedModel(lead, cache_dir, self._metrics, self._forget, self._model_thread)
            self._load: Callable[[str], Awaitable[_LoadedModel]] | None = None
        else:

            async def load(model_id: str) -> _LoadedModel:
                return await self._load_model(model_id)

            self._load = serve.multiplexed(max_num_models_per_replica=pool.max_models_per_replica)(load)
        # Serve runs the constructor on the replica's event loop; the task lives as long as the replica.
        self._gauge_refresh = asyncio.get_running_loop().create_task(self._refresh_gauges_forever())

    async def _refresh_gauges_forever(self) -> None:
        """Sets the scheduler queue gauge of every model this pool serves (0 when not loaded) every
        GAUGE_REFRESH_S, so it reads the queue now and never vanishes while the replica lives."""
        while True:
            for name in self._models:
                loaded = self._loaded.get(name)
                queued = loaded.batches.stats().queued if loaded is not None else 0
                self._metrics.queued.set(queued, tags={"model": name})
            await asyncio.sleep(GAUGE_REFRESH_S)

    async def _load_model(self, name: str) -> _LoadedModel:
        model = self._models.get(name)
        if model is None:
            raise ValueError(f"model {name!r} is not in this pool; it serves {sorted(self._models)}")
        loaded = await asyncio.to_thread(
            _LoadedModel, model, self._cache_dir, self._metrics, self._forget, self._model_thread
        )
        self._loaded[name] = loaded
        return loaded

    def _forget(self, name: str) -> None:
        self._loaded.pop(name, None)
        logger.info("model_unloaded model=%s", name)

    async def _model(self) -> _LoadedModel:
        if self._load is None:
            return self._loaded[self._default]
        name = serve.get_multiplexed_model_id() or self._default
        return await self._load(name)

    def loaded_models(self) -> list[str]:
        """Names of the models this replica has loaded now."""
        return sorted(self._loaded)

    async def generate(self, params: GenerationParams, deadline: float | None = None) -> GenerationResult:
        """Generates the request's images; cancelling the call stops the denoising loop.

        `deadline` is the caller's (seconds since the epoch): a request still queued when it passes
        is dropped with DEADLINE_EXCEEDED before its batch starts.
        """
        result: GenerationResult | None = None
        async for event in self._run(params, report_steps=False, deadline=deadline):
            if isinstance(event, GenerationResult):
                result = event
        if result is None:  # _run always ends with a result or raises
            raise RuntimeError("generation produced no result")
        return result

    async def generate_stream(
        self, params: GenerationParams, preview_every: int = 0, deadline: float | None = None
    ) -> AsyncIterator[StepProgress | GenerationResult]:
        """Yields a `StepProgress` after every step, then the `GenerationResult`.

        Every `preview_every` steps (0: never) the progress carries a low-resolution preview. Closing
        the stream (the caller went away) stops the denoising loop within one step.
        """
        async for event in self._run(params, report_steps=True, preview_every=preview_every, deadline=deadline):
            yield event

    async def _run(
        self,
        params: GenerationParams,
        *,
        report_steps: bool,
        preview_every: int = 0,
        deadline: float | None = None,
    ) -> AsyncIterator[StepProgress | GenerationResult]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StepProgress | None] = asyncio.Queue()
        stop = threading.Event()
        submitted_at = time.perf_counter()

        def on_progress(step: int, total_steps: int, preview_png: bytes | None) -> None:
            elapsed_ms = (time.perf_counter() - submitted_at) * 1000
            progress = StepProgress(step, total_steps, elapsed_ms, preview_png)
            loop.call_soon_threadsafe(events.put_nowait, progress)

        model = await self._model()
        task = asyncio.ensure_future(
            model.batches.run(
                params,
                on_progress if report_steps else None,
                stop,
                preview_every=preview_every,
                deadline=deadline,
            )
        )
        task.add_done_callback(lambda _: events.put_nowait(None))
        finished = False
        try:
            while (progress := await events.get()) is not None:
                yield progress
            batched = task.result()
            finished = True
            yield GenerationResult(
                pngs=batched.pngs,
                scheduler=model.scheduler_name,
                backend=model.backend.name,
                queue_ms=batched.queue_ms,
                denoise_ms=batched.denoise_ms,
                decode_ms=batched.decode_ms,
                verdicts=batched.verdicts,
                scan_ms=batched.scan_ms,
            )
        finally:
            # Reached on success, on error, and when the caller cancels or closes the stream: the
            # batch sees `stop` at its next step and drops this request (the loop ends once every
            # request of the batch has stopped).
            stop.set()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if not finished:
                logger.info("generation_stopped model=%s steps_total=%d", model.name, params.denoising_steps)

    def stats(self) -> SchedulerStats:
        """What this replica's schedulers have done, summed over its loaded models."""
        every = [loaded.batches.stats() for loaded in self._loaded.values()]
        return SchedulerStats(
            steps_run=sum(s.steps_run for s in every),
            batches_run=sum(s.batches_run for s in every),
            batches_stopped=sum(s.batches_stopped for s in every),
            running=any(s.running for s in every),
            queued=sum(s.queued for s in every),
        )

    def check_health(self) -> None:
        """Serve calls this periodically; a single-model replica whose backend is gone is restarted."""
        if self._load is None and not self._loaded:
            raise RuntimeError("model not loaded")
