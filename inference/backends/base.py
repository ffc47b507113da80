"""The interface every generation backend implements, and the request it takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import PIL.Image

from inference.generation import GenerationParams, ShapeBuckets

if TYPE_CHECKING:
    import torch

    # From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

StepCallback = Callable[[int, int], bool]
"""Called as ``on_step(step, total_steps)`` after each denoising step (``step`` counts from 1);
returning ``False`` cancels the generation."""

LatentsCallback = Callable[[int, "torch.Tensor"], None]
"""Called as ``on_latents(step, latents)`` after each denoising step with the batch's latents, one row
per image in request order (for previews); it must not modify them."""


class GenerationCancelled(Exception):
    """Raised by `Backend.generate` when its ``on_step`` callback asked to stop."""

    def __init__(self, completed_steps: int, total_steps: int) -> None:
        super().__init__(f"generation cancelled after {completed_steps} of {total_steps} denoising steps")
        self.completed_steps = completed_steps
        self.total_steps = total_steps

    def __reduce__(self) -> tuple[type[GenerationCancelled], tuple[int, int]]:
        # Ray pickles exceptions across processes; the default rebuilds from the message alone.
        return (type(self), (self.completed_steps, self.total_steps))


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run here (a library or a device is missing); the message says which."""


@dataclass(frozen=True)
class BackendOptions:
    """What a backend needs to know beyond the pipeline: where to cache artefacts, which shapes to expect."""

    cache_dir: Path | None = None
    """Where compiled artefacts (exports, engines, compiler caches) are kept; None keeps them in memory
    or in a temporary directory."""
    max_batch_images: int = 8
    """Most images one pipeline call generates (engines are built for up to this batch)."""
    min_size: int = 64
    """Smallest image side in pixels the backend must support."""
    max_size: int = 512
    """Largest image side in pixels the backend must support."""
    buckets: ShapeBuckets = field(default_factory=ShapeBuckets)
    """The shapes the backend is built for ahead (one graph or profile each); none: any shape, on first use."""


@runtime_checkable
class Backend(Protocol):
    """Runs a loaded diffusion pipeline; every backend (eager, compile, tensorrt) has this shape."""

    name: str
    """The selector string that `create_backend` takes for this backend."""

    supports_editing: bool
    """Whether requests with an `edit` (image-to-image, inpainting) can run on this backend."""

    pipeline: DiffusionPipeline
    """The diffusers pipeline it runs (its scheduler, components and config)."""

    def generate(self, request: GenerationParams, on_step: StepCallback | None = None) -> list[PIL.Image.Image]:
        """Generate the images a request asks for.

        Image i is generated from a generator seeded with ``request.seed + i``, so it is the same
        whether it is generated alone or in a batch.

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
        ...

    def generate_batch(
        self,
        requests: Sequence[GenerationParams],
        on_step: StepCallback | None = None,
        on_latents: LatentsCallback | None = None,
    ) -> list[list[PIL.Image.Image]]:
        """Generate several compatible requests in one pipeline call.

        Every request must have the same `batch_key`; prompts, negative prompts, seeds and image counts
        may differ. Each image equals the one the request would get alone with the same seed (up to the
        rounding of batched CPU kernels: one level out of 255).

        Returns:
            One list of images per request, in order.

        Raises:
            GenerationCancelled: If ``on_step`` returned ``False``.
            ValueError: If the requests do not share one batch key, or the size is not possible.
        """
        ...
