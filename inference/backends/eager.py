"""The eager backend: calls the diffusers pipeline as it is, on any device."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import PIL.Image
import torch

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from inference.backends.base import GenerationCancelled, GenerationParams, LatentsCallback, StepCallback, batch_key


class EagerBackend:
    """Runs a diffusers text-to-image pipeline in PyTorch eager mode.

    The pipeline keeps per-call state on itself (guidance scale, interrupt flag, timestep count), so
    calls on one backend are serialised; run one backend per pipeline.
    """

    name: str = "eager"

    def __init__(self, pipeline: DiffusionPipeline) -> None:
        """Wrap a loaded pipeline.

        Args:
            pipeline: A diffusers text-to-image pipeline whose ``__call__`` takes
                ``callback_on_step_end`` (Stable Diffusion 1.x/2.x, SDXL, SD3, Flux).
        """
        self.pipeline = pipeline
        self._lock = threading.Lock()

    def generate(self, request: GenerationParams, on_step: StepCallback | None = None) -> list[PIL.Image.Image]:
        """Generate the images a request asks for.

        Image i is generated from a generator on the pipeline's device seeded with
        ``request.seed + i``, so it is the same whether it is generated alone or in a batch (up to
        floating-point differences of batched kernels).

        Args:
            request: What to generate.
            on_step: Called as ``on_step(step, total_steps)`` after each denoising step, ``step``
                counting from 1; returning ``False`` stops the denoising loop.

        Returns:
            ``request.num_images`` images of ``request.width`` x ``request.height`` pixels.

        Raises:
            GenerationCancelled: If ``on_step`` returned ``False``.
            ValueError: If the model cannot generate the requested size.
        """
        return self.generate_batch([request], on_step)[0]

    def generate_batch(
        self,
        requests: Sequence[GenerationParams],
        on_step: StepCallback | None = None,
        on_latents: LatentsCallback | None = None,
    ) -> list[list[PIL.Image.Image]]:
        """Generate several requests sharing one `batch_key` in one pipeline call.

        Each image gets its own prompt row and its own generator (seeded ``request.seed + i``), so
        every image is the one its request would get alone, up to the rounding of batched kernels.

        Args:
            requests: At least one request; all with the same `batch_key`.
            on_step: As for `generate`, once per step of the whole batch.
            on_latents: Called as ``on_latents(step, latents)`` after each step, before ``on_step``.

        Returns:
            One list of images per request, in order.

        Raises:
            GenerationCancelled: If ``on_step`` returned ``False``.
            ValueError: If `requests` is empty or mixes batch keys, or the size is not possible.
        """
        if not requests:
            raise ValueError("generate_batch needs at least one request.")
        key = batch_key(requests[0])
        if any(batch_key(request) != key for request in requests):
            raise ValueError("generate_batch requests must share size, steps and guidance scale (one batch_key).")
        device = self.pipeline.device
        prompts = [request.prompt for request in requests for _ in range(request.num_images)]
        negatives = [request.negative_prompt for request in requests for _ in range(request.num_images)]
        generators = [
            torch.Generator(device).manual_seed(request.seed + index)
            for request in requests
            for index in range(request.num_images)
        ]
        progress = _StepReporter(on_step, on_latents) if on_step is not None or on_latents is not None else None
        # Text-to-image pipelines define __call__; their DiffusionPipeline base class does not.
        run_pipeline = cast(Callable[..., Any], self.pipeline)
        with self._lock, torch.inference_mode():
            output = run_pipeline(
                prompt=prompts,
                # An empty negative prompt is what the pipeline uses for None, row by row.
                negative_prompt=negatives if any(negatives) else None,
                width=key.width,
                height=key.height,
                num_inference_steps=key.steps,
                guidance_scale=key.guidance_scale,
                num_images_per_prompt=1,
                generator=generators,
                output_type="pil",
                callback_on_step_end=progress,
                callback_on_step_end_tensor_inputs=["latents"],
            )
        if progress is not None and progress.cancelled_at is not None:
            raise GenerationCancelled(progress.cancelled_at, progress.total_steps)
        images: list[PIL.Image.Image] = output.images
        results: list[list[PIL.Image.Image]] = []
        offset = 0
        for request in requests:
            results.append(images[offset : offset + request.num_images])
            offset += request.num_images
        return results


class _StepReporter:
    """A diffusers ``callback_on_step_end`` that reports progress and interrupts on request."""

    def __init__(self, on_step: StepCallback | None, on_latents: LatentsCallback | None = None) -> None:
        self._on_step = on_step
        self._on_latents = on_latents
        self.cancelled_at: int | None = None
        self.total_steps = 0

    def __call__(
        self,
        # The running pipeline; `num_timesteps` and `_interrupt` belong to each pipeline class.
        pipeline: Any,
        step_index: int,
        timestep: Any,
        callback_kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        # The loop's length, not the requested steps: second-order schedulers run more iterations.
        self.total_steps = int(pipeline.num_timesteps)
        completed = step_index + 1
        if self._on_latents is not None:
            self._on_latents(completed, callback_kwargs["latents"])
        if self._on_step is not None and self._on_step(completed, self.total_steps) is False:
            self.cancelled_at = completed
            # diffusers' documented way to stop: the loop skips its remaining iterations. The VAE
            # still decodes the partial latents before the pipeline returns; the images are dropped.
            pipeline._interrupt = True
        # Returning no tensors leaves the pipeline's latents and embeddings as they are.
        return {}
