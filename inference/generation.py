"""What a generation asks for and gets back: modes, parameters, batch keys, progress and results.

Torch-free, so the Gateway (which runs on CPU nodes without torch or diffusers) validates and
routes requests with the same types the replicas run them with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# torch.Generator.manual_seed takes any 64-bit value; image i uses seed + i, so the whole range
# seed .. seed + num_images - 1 must fit.
_MAX_SEED = 2**64 - 1

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


@dataclass(frozen=True)
class StepProgress:
    """Sent after every denoising step of a streamed generation."""

    step: int
    total_steps: int
    elapsed_ms: float
    preview_png: bytes | None = None
    """Low-resolution PNG of the first image, on the steps the request asked previews for."""


@dataclass(frozen=True)
class OutputVerdict:
    """An image classifier's verdict on one generated image: its category nearest to (or furthest over) its
    threshold. The control plane decides what an image at or above its threshold becomes."""

    category: str
    """The classifier's category, e.g. ``concept_3``."""
    score: float
    """How strongly the image matches `category`, in [0, 1]."""
    threshold: float
    """The score at and above which `category` counts as present, in [0, 1] (0 flags every image)."""
    classifier: str
    """Which classifier judged it (``tiny-safety-checker``, or a checkpoint directory's name)."""

    @property
    def above_threshold(self) -> bool:
        """Whether the image counts as showing `category`."""
        return self.score >= self.threshold


@dataclass(frozen=True)
class GenerationResult:
    """The images of one request, PNG-encoded, with where the time went."""

    pngs: list[bytes]
    scheduler: str
    backend: str
    queue_ms: float
    """Waiting in this replica for the request's batch to start."""
    denoise_ms: float
    """From the start of the pipeline call to the end of the last denoising step."""
    decode_ms: float
    """VAE decode and PNG encoding after the last step."""
    verdicts: tuple[OutputVerdict, ...] = ()
    """The output classifier's verdict on each image, in the order of `pngs`."""
    scan_ms: float = 0.0
    """The output classifier's run over the request's batch (part of the replica's time, after decode)."""


@dataclass(frozen=True)
class ShapeBuckets:
    """The shapes a model's fast backend is built for: batch sizes and image sizes.

    A batch whose image size is a bucket's runs on the fast backend, padded up to the smallest batch
    bucket that holds it (one CUDA graph or TensorRT profile per bucket, built before the replica is
    ready); any other batch runs on the eager path of the same weights. No buckets: every shape runs
    on the fast backend, compiled (or shaped) on first use.
    """

    batch_sizes: tuple[int, ...] = ()
    """Image counts a pipeline call is padded up to, ascending (e.g. 1, 2, 4, 8)."""
    sizes: tuple[tuple[int, int], ...] = ()
    """Image sizes as (width, height) in pixels."""

    def __post_init__(self) -> None:
        if list(self.batch_sizes) != sorted(set(self.batch_sizes)) or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"ShapeBuckets.batch_sizes must be ascending, distinct and >= 1, got {self.batch_sizes}.")
        if bool(self.batch_sizes) != bool(self.sizes):
            raise ValueError("ShapeBuckets needs both batch_sizes and sizes, or neither.")

    def __bool__(self) -> bool:
        return bool(self.batch_sizes)

    def padded_batch(self, width: int, height: int, images: int) -> int | None:
        """The batch size a call of `images` images at `width` x `height` is padded to; None when no bucket
        holds it (it runs eagerly). Without buckets, `images` itself."""
        if not self:
            return images
        if (width, height) not in self.sizes:
            return None
        return next((size for size in self.batch_sizes if size >= images), None)

    def describe(self) -> str:
        """``batch 1,2,4 at 512x512,768x768`` (for ListModels and logs); empty without buckets."""
        if not self:
            return ""
        sizes = ",".join(f"{w}x{h}" for w, h in self.sizes)
        return f"batch {','.join(map(str, self.batch_sizes))} at {sizes}"
