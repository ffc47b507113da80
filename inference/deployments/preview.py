"""Low-resolution previews of an image while it is being denoised, straight from the latents.

Decoding with the VAE every few steps would cost as much as a step; instead each latent channel's
contribution to RGB is approximated linearly (the factors community tools use for SD 1.x latents),
giving a PNG at latent resolution (1/8 of the image's side) in well under a millisecond.
"""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import torch

# Rows: the four SD 1.x/2.x latent channels; columns: their contribution to R, G and B.
_SD_LATENT_TO_RGB = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)


def latent_preview_png(latent: torch.Tensor) -> bytes:
    """A PNG preview of one image's latents, shaped ``(channels, height, width)``.

    Four-channel latents use the SD 1.x factors; other latent spaces show their first three channels,
    normalised, which is enough to see composition emerge.
    """
    latent = latent.detach().to(device="cpu", dtype=torch.float32)
    if latent.shape[0] == _SD_LATENT_TO_RGB.shape[0]:
        rgb = torch.einsum("chw,cr->hwr", latent, _SD_LATENT_TO_RGB)
        rgb = (rgb + 1) / 2
    else:
        rgb = latent[:3].permute(1, 2, 0)
        low, high = rgb.min(), rgb.max()
        rgb = (rgb - low) / (high - low).clamp(min=1e-6)
    pixels = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.ascontiguousarray(pixels), mode="RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
