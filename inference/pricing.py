"""What a generation costs, in whole credits.

    cost = num_images * max(1, ceil(millicredits_per_step * steps * (width * height) / 512**2 / 1000))

A model's `millicredits_per_step` prices one denoising step of one 512x512 image; bigger
images cost proportionally more pixels, and every image costs at least one credit.

`steps` is the number of denoising steps actually run: the requested steps for text-to-image,
``int(steps * strength)`` for an edit (image-to-image or inpainting skip the first part of the
schedule; see `inference.backends.base.denoising_steps`). Encoding the init image with the VAE
costs about one decode and is not charged; storing the upload is free. The
gateway reserves exactly this amount before generating and commits it once the images are
stored, so the balance drops by `cost` for a successful request and by nothing otherwise.
"""

from __future__ import annotations

from inference.config import ModelConfig

_REFERENCE_PIXELS = 512 * 512
_MILLI = 1000


def generation_cost(model: ModelConfig, *, width: int, height: int, steps: int, num_images: int) -> int:
    """Credits charged for `num_images` images of `width` x `height` pixels at `steps` denoising steps run."""
    per_image_millicredits = model.millicredits_per_step * steps * width * height
    per_image_divisor = _REFERENCE_PIXELS * _MILLI
    # Ceiling division in integers: floats would misprice large requests by a rounding error.
    per_image = max(1, -(-per_image_millicredits // per_image_divisor))
    return num_images * per_image
