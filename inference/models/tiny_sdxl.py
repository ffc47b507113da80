"""The builtin `tiny-sdxl` model: a real Stable Diffusion XL pipeline with tiny, seeded random weights.

Built like `tiny-sd` (same tokenizer, VAE and scheduler), with SDXL's architecture: two CLIP text
encoders (the second with a projection, whose pooled output conditions the UNet), and a UNet with
``text_time`` added conditioning (``text_embeds`` and the six ``time_ids``). Shapes follow diffusers'
own SDXL test fixtures; a 64x64 image takes a fraction of a second on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from inference.models.tiny_sd import build_scheduler, build_tokenizer, build_vae, ensure_saved, text_encoder_config

# Bump whenever the architecture or the initialisation changes (part of the cache directory's name).
TINY_SDXL_BUILDER_VERSION = 1

# Both encoders are tiny-sd's 32 wide; SDXL concatenates their hidden states for cross-attention.
_TEXT_HIDDEN = 32
_TIME_EMBED = 8


def tiny_sdxl_dir_name(seed: int = 0) -> str:
    """The cache directory name of the tiny-sdxl pipeline built with `seed` (``tiny-sdxl-v1-seed0``)."""
    return f"tiny-sdxl-v{TINY_SDXL_BUILDER_VERSION}-seed{seed}"


def build_tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """Build the tiny-sdxl pipeline in memory, on the CPU, in float32; the same seed gives the same weights.

    The global torch RNG is left as it was.
    """
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_EMBED,
            transformer_layers_per_block=(1, 2),
            # Six time ids of _TIME_EMBED each, then the second encoder's pooled projection.
            projection_class_embeddings_input_dim=6 * _TIME_EMBED + _TEXT_HIDDEN,
            cross_attention_dim=2 * _TEXT_HIDDEN,
            norm_num_groups=1,
        )
        vae = build_vae()
        text_encoder = CLIPTextModel(text_encoder_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(text_encoder_config(tokenizer, projection_dim=_TEXT_HIDDEN))
    components: dict[str, Any] = {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "unet": unet,
        "scheduler": build_scheduler(),
    }
    pipeline = StableDiffusionXLPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def ensure_tiny_sdxl(cache_dir: Path, seed: int = 0) -> Path:
    """Return the directory of the saved tiny-sdxl pipeline, building and saving it first if needed.

    Raises:
        OSError: If the cache directory cannot be created or written.
    """
    return ensure_saved(cache_dir, tiny_sdxl_dir_name(seed), lambda: build_tiny_sdxl(seed))
