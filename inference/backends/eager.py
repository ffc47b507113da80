"""The eager backend: calls the diffusers pipeline as it is, on any device.

Edits run diffusers' image-to-image and inpainting pipelines of the same family (for SD 1.x,
`StableDiffusionImg2ImgPipeline` and `StableDiffusionInpaintPipeline`), made with ``from_pipe`` from
the loaded pipeline's own modules: no second copy of the weights, and a compiled UNet stays compiled.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import PIL.Image
import torch
from diffusers.pipelines.auto_pipeline import AutoPipelineForImage2Image, AutoPipelineForInpainting

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from inference.backends.base import GenerationCancelled, LatentsCallback, StepCallback
from inference.generation import IMAGE_TO_IMAGE, INPAINT, BatchKey, GenerationParams, batch_key


class EagerBackend:
    """Runs a diffusers text-to-image pipeline in PyTorch eager mode.

    The pipeline keeps per-call state on itself (guidance scale, interrupt flag, timestep count), so
    calls on one backend are serialised; run one backend per pipeline.
    """

    name: str = "eager"
    supports_editing: bool = True

    def __init__(self, pipeline: DiffusionPipeline) -> None:
        """Wrap a loaded pipeline.

        Args:
            pipeline: A diffusers text-to-image pipeline whose ``__call__`` takes
                ``callback_on_step_end`` (Stable Diffusion 1.x/2.x, SDXL, SD3, Flux).
        """
        self.pipeline = pipeline
        self._lock = threading.Lock()
        # Image-to-image and inpainting views of `pipeline`, made on first use (see `edit_pipeline`).
        self._edit_pipelines: dict[str, DiffusionPipeline] = {}

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
            raise ValueError(
                "generate_batch requests must share mode, size, steps, guidance scale and strength (one batch_key)."
            )
        device = self.pipeline.device
        prompts = [request.prompt for request in requests for _ in range(request.num_images)]
        negatives = [request.negative_prompt for request in requests for _ in range(request.num_images)]
        generators = [
            torch.Generator(device).manual_seed(request.seed + index)
            for request in requests
            for index in range(request.num_images)
        ]
        progress = _StepReporter(on_step, on_latents) if on_step is not None or on_latents is not None else None
        with self._lock, torch.inference_mode():
            pipeline, mode_kwargs = self._pipeline_for(key, requests)
            # Text-to-image pipelines define __call__; their DiffusionPipeline base class does not.
            run_pipeline = cast(Callable[..., Any], pipeline)
            output = run_pipeline(
                prompt=prompts,
                # An empty negative prompt is what the pipeline uses for None, row by row.
                negative_prompt=negatives if any(negatives) else None,
                **mode_kwargs,
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

    def edit_pipeline(self, mode: str) -> DiffusionPipeline:
        """The pipeline that runs edits of `mode` (`IMAGE_TO_IMAGE` or `INPAINT`), made on first use.

        It holds this backend's own modules (the same UNet, VAE, text encoder and scheduler objects), so
        it costs no memory for weights, and a backend that replaced a module (a compiled UNet) edits
        with it too.

        Raises:
            ValueError: `mode` is not an edit mode, this backend does not edit, or diffusers has no
                pipeline of that mode for the model's family.
        """
        if not self.supports_editing:
            raise ValueError(f"backend {self.name!r} does not run image edits; use 'eager' or 'compile'.")
        if mode not in (IMAGE_TO_IMAGE, INPAINT):
            raise ValueError(f"mode {mode!r} is not an edit mode; use {IMAGE_TO_IMAGE!r} or {INPAINT!r}.")
        pipeline = self._edit_pipelines.get(mode)
        if pipeline is None:
            # from_pipe shares the loaded modules (no copy of the weights) and picks the model family's
            # image-to-image or inpainting class; unlike DiffusionPipeline.from_pipe it casts nothing.
            auto = AutoPipelineForImage2Image if mode == IMAGE_TO_IMAGE else AutoPipelineForInpainting
            pipeline = auto.from_pipe(self.pipeline)
            pipeline.set_progress_bar_config(**getattr(self.pipeline, "_progress_bar_config", {}))
            self._edit_pipelines[mode] = pipeline
        return pipeline

    def _pipeline_for(
        self, key: BatchKey, requests: Sequence[GenerationParams]
    ) -> tuple[DiffusionPipeline, dict[str, Any]]:
        """The pipeline that runs `key`'s mode, and the arguments that differ between modes.

        Called with `_lock` held. Edits pass one init image (and mask) per image row, so requests with
        different images share a call; each image's generator also draws its VAE encoding, so a row's
        result does not depend on the rest of the batch.
        """
        if key.mode not in (IMAGE_TO_IMAGE, INPAINT):
            return self.pipeline, {"width": key.width, "height": key.height}
        pipeline = self.edit_pipeline(key.mode)
        edits = [request.edit for request in requests for _ in range(request.num_images)]
        kwargs: dict[str, Any] = {
            "image": [_decode_png(edit.init_png, "RGB") for edit in edits if edit is not None],
            "strength": key.strength,
        }
        if key.mode == INPAINT:
            kwargs["mask_image"] = [_decode_png(edit.mask_png, "L") for edit in edits if edit and edit.mask_png]
            kwargs["width"], kwargs["height"] = key.width, key.height
        if any(len(images) != len(edits) for images in kwargs.values() if isinstance(images, list)):
            raise ValueError(f"every request of a {key.mode} batch needs its init image (and mask).")
        return pipeline, kwargs


def _decode_png(data: bytes | None, mode: str) -> PIL.Image.Image:
    # The gateway made these PNGs from validated uploads; converting guards the pipeline's channel count.
    with PIL.Image.open(io.BytesIO(data or b""), formats=("PNG",)) as image:
        return image.convert(mode)


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
