"""The builtin `tiny-sd` model: a real Stable Diffusion pipeline with tiny, seeded random weights.

No weights can be downloaded where atelier is developed and tested, so the default model is built here
from diffusers' and transformers' own classes with tiny dimensions. Its images are noise, but every code
path (tokenizer, text encoder, UNet, scheduler, VAE, `save_pretrained`/`from_pretrained`) is the one a
real SD 1.5 checkpoint takes, and a 64x64 image takes a fraction of a second on a CPU.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from inference._locking import exclusive_lock

# Bump whenever the architecture, the tokenizer or the initialisation changes: it is part of the cache
# directory's name, so a changed builder never loads weights saved by an older one.
TINY_SD_BUILDER_VERSION = 1

# CLIP's context length; SD pipelines pad every prompt to the tokenizer's model_max_length.
_MAX_TOKENS = 77
_TEXT_HIDDEN = 32
_BOS_TOKEN = "<|startoftext|>"
_EOS_TOKEN = "<|endoftext|>"
# Written by every diffusers `save_pretrained`; complete saves are renamed into place, so its presence
# in the cache directory marks a complete pipeline.
_MODEL_INDEX = "model_index.json"


def tiny_sd_dir_name(seed: int = 0) -> str:
    """Return the cache directory name of the tiny-sd pipeline built with `seed`.

    Args:
        seed: Seed of the random weights.

    Returns:
        A name such as ``tiny-sd-v1-seed0`` that changes with the builder version and the seed.
    """
    return f"tiny-sd-v{TINY_SD_BUILDER_VERSION}-seed{seed}"


def build_tiny_sd(seed: int = 0) -> StableDiffusionPipeline:
    """Build the tiny-sd pipeline in memory, on the CPU, in float32.

    The same seed gives bit-identical weights (with the same torch, diffusers and transformers versions).
    The global torch RNG is left as it was.

    Args:
        seed: Seed of the random weights.

    Returns:
        A `StableDiffusionPipeline` (UNet2DConditionModel, AutoencoderKL with a VAE scale factor of 8,
        CLIPTextModel, byte-level CLIPTokenizer, EulerDiscreteScheduler) without a safety checker.
    """
    tokenizer = build_tokenizer()
    # Module constructors draw their initial weights from the global RNG; fork it so building a model
    # neither depends on nor disturbs whatever seeded that RNG before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _build_unet()
        vae = build_vae()
        text_encoder = _build_text_encoder(tokenizer)
    # Passed as a dict, as diffusers' own tests do: the constructor's annotations are narrower than
    # what it accepts (any scheduler, no safety checker).
    components: dict[str, Any] = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": build_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
    }
    pipeline = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def ensure_tiny_sd(cache_dir: Path, seed: int = 0) -> Path:
    """Return the directory of the saved tiny-sd pipeline, building and saving it first if needed.

    Safe to call from many processes at once (see `ensure_saved`).

    Args:
        cache_dir: Directory holding cached models; created if missing.
        seed: Seed of the random weights.

    Returns:
        A local directory that `DiffusionPipeline.from_pretrained` loads.

    Raises:
        OSError: If the cache directory cannot be created or written.
    """
    return ensure_saved(cache_dir, tiny_sd_dir_name(seed), lambda: build_tiny_sd(seed))


def ensure_saved(cache_dir: Path, name: str, build: Callable[[], DiffusionPipeline]) -> Path:
    """Return ``cache_dir / name``, saving the pipeline `build` makes there first if it is not saved yet.

    One process builds while the others wait on a file lock, and the pipeline is saved into a temporary
    directory beside the final one and renamed into place, so a reader never sees a half-written one.

    Raises:
        OSError: If the cache directory cannot be created or written.
    """
    target = cache_dir / name
    if _is_saved_pipeline(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(cache_dir / f".{name}.lock"):
        # Another process may have finished the build while this one waited for the lock.
        if _is_saved_pipeline(target):
            return target
        _remove_leftovers(cache_dir, name, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
        try:
            build().save_pretrained(staging)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _build_unet() -> UNet2DConditionModel:
    # Shapes follow diffusers' own SD test fixtures; sample_size 8 makes the pipeline's default size
    # 8 * vae_scale_factor = 64 pixels.
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=_TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_vae() -> AutoencoderKL:
    """The tiny SD-family VAE (8x downsampling, 4 latent channels)."""
    # Four blocks give the 8x downsampling of the real SD VAE, so latents and images have SD's ratio.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def _build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(text_encoder_config(tokenizer))


def text_encoder_config(tokenizer: CLIPTokenizer, **extra: Any) -> CLIPTextConfig:
    """The tiny CLIP text encoder's config (`extra` adds fields, such as SDXL's ``projection_dim``)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MAX_TOKENS,
        layer_norm_eps=1e-5,
        # CLIP pools the hidden state at the first eos token; it must be the tokenizer's real id
        # (eos_token_id=2 switches CLIP to a legacy argmax rule).
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_tokenizer() -> CLIPTokenizer:
    """The tiny models' byte-level CLIP tokenizer (every byte a token; 77 tokens of context)."""
    # A byte-level BPE vocabulary with no merges: every byte is a token, with and without CLIP's
    # end-of-word suffix, so any prompt tokenizes without unknown tokens. Ids follow real CLIP's layout
    # (bytes, bytes + "</w>", ..., then the two special tokens last).
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [f"{char}</w>" for char in byte_chars] + [_BOS_TOKEN, _EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        bos_token=_BOS_TOKEN,
        eos_token=_EOS_TOKEN,
        unk_token=_EOS_TOKEN,
        pad_token=_EOS_TOKEN,
        model_max_length=_MAX_TOKENS,
    )


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map, which byte-level BPE vocabularies are written in.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {byte: chr(byte) for byte in printable}
    shift = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shift)
            shift += 1
    return dict(sorted(mapping.items()))


def build_scheduler() -> EulerDiscreteScheduler:
    """Euler with Stable Diffusion 1.5's noise schedule."""
    # Stable Diffusion 1.5's noise schedule.
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )


def _is_saved_pipeline(path: Path) -> bool:
    return (path / _MODEL_INDEX).is_file()


def _remove_leftovers(cache_dir: Path, name: str, target: Path) -> None:
    # Staging directories of builds that crashed, and a target without a model index (not written by
    # this module, which renames only complete saves), would block the rename; the lock is held, so no
    # other process is using them.
    for leftover in cache_dir.glob(f".{name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
