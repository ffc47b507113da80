"""The interface every generation backend implements, and the request it takes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import PIL.Image

if TYPE_CHECKING:
    import torch

# torch.Generator.manual_seed takes any 64-bit value; image i uses seed + i, so the whole range
# seed .. seed + num_images - 1 must fit.
_MAX_SEED = 2**64 - 1

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


TEXT_TO_IMAGE = "text_to_image"
IMAGE_TO_IMAGE = "image_to_image"
INPAINT = "inpaint"
GENERATION_MODES: tuple[str, ...] = (TEXT_TO_IMAGE, IMAGE_TO_IMAGE, INPAINT)
"""How a request makes its images: from noise, from an init image, or repainting a masked part of one."""


def denoising_steps(steps: int, strength: float) -> int:
    """Denoising steps an edit with `strength` runs out of `steps`: diffusers' own rule.

    Image-to-image and inpainting pipelines skip the first ``(1 - strength)`` of the schedule and run
    ``min(int(steps * strength), steps)`` steps (``get_timesteps`` in diffusers' SD pipelines); strength
    1.0 runs them all. Pricing and progress use this same count.
    """
    return min(int(steps * strength), steps)


@dataclass(frozen=True)
class ImageEdit:
    """What turns a request into an edit: the init image, how much to change it, and where."""

    init_png: bytes
    """The init image as a PNG, RGB, already at the request's width x height."""

    strength: float
    """How much of the denoising schedule to run over the init image, in (0, 1]: 1.0 starts from pure
    noise (the init image only seeds it), small values keep it nearly as it is."""

    mask_png: bytes | None = None
    """Inpainting: a black-and-white PNG at the request's size, white where the image is repainted and
    black where it is kept; None for image-to-image."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.strength) and 0.0 < self.strength <= 1.0):
            raise ValueError(f"ImageEdit.strength must lie within (0, 1], got {self.strength}.")
        if not self.init_png:
            raise ValueError("ImageEdit.init_png must not be empty.")

    @property
    def mode(self) -> str:
        """`INPAINT` with a mask, else `IMAGE_TO_IMAGE`."""
        return INPAINT if self.mask_png is not None else IMAGE_TO_IMAGE


@dataclass(frozen=True)
class GenerationParams:
    """One generation request (text-to-image, or an edit when `edit` is set), validated at construction."""

    prompt: str
    """Text describing the image."""

    negative_prompt: str
    """Text describing what to steer away from; empty for none."""

    width: int
    """Image width in pixels, > 0 (the model may require a multiple of 8 or 16)."""

    height: int
    """Image height in pixels, > 0 (the model may require a multiple of 8 or 16)."""

    steps: int
    """Number of denoising steps, >= 1."""

    guidance_scale: float
    """Classifier-free guidance scale, >= 0; values <= 1 turn guidance off."""

    seed: int
    """Seed of image 0; image i uses ``seed + i``. 0 <= seed and seed + num_images - 1 < 2**64."""

    num_images: int
    """Number of images to generate for the prompt, >= 1."""

    edit: ImageEdit | None = None
    """The init image (and mask) of an image-to-image or inpainting request; None for text-to-image."""

    @property
    def mode(self) -> str:
        """One of `GENERATION_MODES`."""
        return TEXT_TO_IMAGE if self.edit is None else self.edit.mode

    @property
    def denoising_steps(self) -> int:
        """Denoising steps the pipeline actually runs: `steps`, or fewer for an edit (`denoising_steps`)."""
        return self.steps if self.edit is None else denoising_steps(self.steps, self.edit.strength)

    def __post_init__(self) -> None:
        for field_name in ("width", "height", "steps", "num_images"):
            value = getattr(self, field_name)
            if value < 1:
                raise ValueError(f"GenerationParams.{field_name} must be >= 1, got {value}.")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"GenerationParams.guidance_scale must be finite and >= 0, got {self.guidance_scale}.")
        if self.seed < 0 or self.seed + self.num_images - 1 > _MAX_SEED:
            raise ValueError(
                f"GenerationParams.seed must be in [0, {_MAX_SEED - self.num_images + 1}] for "
                f"{self.num_images} images, got {self.seed}."
            )
        if self.edit is not None and self.denoising_steps < 1:
            raise ValueError(
                f"GenerationParams.steps * edit.strength must be >= 1 for an edit, got {self.steps} * "
                f"{self.edit.strength}."
            )


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


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to run in one pipeline call: everything but prompts, seeds and images."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    mode: str = TEXT_TO_IMAGE
    """One of `GENERATION_MODES`: each mode runs its own pipeline."""
    strength: float = 1.0
    """An edit's strength (it sets where the schedule starts); 1.0 for text-to-image."""


def batch_key(request: GenerationParams) -> BatchKey:
    """The key under which `request` may be batched with others (same mode, size, steps, guidance, strength).

    Init images and masks may differ within a batch: each image row gets its own.
    """
    strength = 1.0 if request.edit is None else request.edit.strength
    return BatchKey(request.width, request.height, request.steps, request.guidance_scale, request.mode, strength)


@runtime_checkable
class Backend(Protocol):
    """Runs a loaded diffusion pipeline; every backend (eager, compile, tensorrt) has this shape."""

    name: str
    """The selector string that `create_backend` takes for this backend."""

    supports_editing: bool
    """Whether requests with an `edit` (image-to-image, inpainting) can run on this backend."""

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
