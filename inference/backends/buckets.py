"""Shape buckets: the fast backend runs the shapes it was built for, the eager path of the same weights the rest.

A batch whose image size is a bucket's is padded with filler rows up to the smallest batch bucket that
holds it (filler rows have their own generators, so they change no real image), so the fast backend
only ever sees shapes it compiled or built during warm-up; any other batch (another size, more images
than the largest bucket, an edit) runs on the eager pipeline, which shares every module with the fast
one but the replaced ones. No shape is compiled after the replica reported healthy.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import PIL.Image

from inference.backends.base import Backend, LatentsCallback, StepCallback
from inference.backends.eager import EagerBackend
from inference.generation import TEXT_TO_IMAGE, GenerationParams, ShapeBuckets, batch_key

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# Steps of a warm-up call: two, so multistep schedulers run both their first-step and later paths.
_WARM_UP_STEPS = 2


class BucketedBackend:
    """A `Backend` that sends each batch to the fast backend (padded to a bucket) or to the eager one."""

    def __init__(self, fast: Backend, eager: EagerBackend, buckets: ShapeBuckets) -> None:
        """Args: `fast` runs the buckets' shapes, `eager` every other (same weights); `buckets` non-empty."""
        if not buckets:
            raise ValueError("BucketedBackend needs at least one bucket; use the fast backend alone without.")
        self.fast = fast
        self.eager = eager
        self.buckets = buckets
        self.name = fast.name
        # Holds the same scheduler and unreplaced modules as the fast backend's pipeline.
        self.pipeline = eager.pipeline
        # As the fast backend: validation decides by backend name, and edits then run eagerly.
        self.supports_editing = fast.supports_editing
        self.eager_batches = 0
        """Batches that ran eagerly because no bucket held them."""

    def generate(self, request: GenerationParams, on_step: StepCallback | None = None) -> list[PIL.Image.Image]:
        """As `Backend.generate`."""
        return self.generate_batch([request], on_step)[0]

    def generate_batch(
        self,
        requests: Sequence[GenerationParams],
        on_step: StepCallback | None = None,
        on_latents: LatentsCallback | None = None,
    ) -> list[list[PIL.Image.Image]]:
        """As `Backend.generate_batch`; a batch no bucket holds runs on the eager path."""
        if not requests:
            raise ValueError("generate_batch needs at least one request.")
        key = batch_key(requests[0])
        images = sum(request.num_images for request in requests)
        padded = self.buckets.padded_batch(key.width, key.height, images) if key.mode == TEXT_TO_IMAGE else None
        if padded is None:
            self.eager_batches += 1
            return self.eager.generate_batch(requests, on_step, on_latents)
        batch = list(requests)
        if padded > images:
            # One filler request of the missing rows: an empty prompt, seeded like any other row.
            batch.append(
                dataclasses.replace(requests[0], prompt="", negative_prompt="", seed=0, num_images=padded - images)
            )
        real_rows: LatentsCallback | None = None
        if on_latents is not None:
            report = on_latents

            def real_rows(step: int, latents: torch.Tensor) -> None:
                report(step, latents[:images])

        return self.fast.generate_batch(batch, on_step, real_rows)[: len(requests)]

    def warm_up(self, guidance_scale: float, on_bucket: Callable[[str, float], None] | None = None) -> None:
        """Runs every bucket once on the fast backend (compiling or loading it), before the replica is ready.

        Args:
            guidance_scale: The model's default guidance: above 1 the UNet runs at twice the batch.
            on_bucket: Called as ``on_bucket("2x512x512", seconds)`` after each bucket (for metrics).
        """
        for width, height in self.buckets.sizes:
            for batch in self.buckets.batch_sizes:
                started = time.perf_counter()
                request = GenerationParams("", "", width, height, _WARM_UP_STEPS, guidance_scale, 0, batch)
                self.fast.generate_batch([request])
                seconds = time.perf_counter() - started
                bucket = f"{batch}x{width}x{height}"
                logger.info("bucket_warm backend=%s bucket=%s seconds=%.2f", self.name, bucket, seconds)
                if on_bucket is not None:
                    on_bucket(bucket, seconds)
