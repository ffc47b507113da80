"""Writes a diffusers Stable Diffusion pipeline as one `.safetensors` file in the original (LDM/CompVis)
key layout, the inverse of diffusers' `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint` and
`convert_ldm_clip_checkpoint` for the block layouts of the tiny models (any `layers_per_block`)."""

from __future__ import annotations

from pathlib import Path

from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from safetensors.torch import save_file

_UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_ATTENTION = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def _rename_prefix(rest: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for new, old in pairs:
        if rest.startswith(new):
            return old + rest[len(new) :]
    return rest


def _unet_key(key: str, parts: list[str], per_level: int, upsampler_slot: dict[int, int]) -> str:
    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if key in fixed:
        return fixed[key]
    block, rest = parts[0], ".".join(parts[4:])
    resnet = _rename_prefix(rest, tuple((n + ".", o + ".") for n, o in _UNET_RESNET))
    if block == "mid_block":
        index = int(parts[2])
        sub = ".".join(parts[3:])
        if parts[1] == "resnets":
            return f"middle_block.{2 * index}." + _rename_prefix(
                sub, tuple((n + ".", o + ".") for n, o in _UNET_RESNET)
            )
        return "middle_block.1." + sub
    level, kind = int(parts[1]), parts[2]
    if block == "down_blocks":
        first = 1 + level * per_level
        if kind == "resnets":
            return f"input_blocks.{first + int(parts[3])}.0.{resnet}"
        if kind == "attentions":
            return f"input_blocks.{first + int(parts[3])}.1.{rest}"
        return f"input_blocks.{first + per_level - 1}.0.op." + ".".join(parts[5:])
    first = level * per_level
    if kind == "resnets":
        return f"output_blocks.{first + int(parts[3])}.0.{resnet}"
    if kind == "attentions":
        return f"output_blocks.{first + int(parts[3])}.1.{rest}"
    return f"output_blocks.{first + per_level - 1}.{upsampler_slot[level]}.conv." + ".".join(parts[5:])


def _vae_key(key: str, parts: list[str], up_blocks: int) -> str:
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in fixed:
        return fixed[key]
    coder, block = parts[0], parts[1]
    if block == "mid_block":
        if parts[2] == "resnets":
            return f"{coder}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:]).replace(
                "conv_shortcut", "nin_shortcut"
            )
        return f"{coder}.mid.attn_1." + _rename_prefix(".".join(parts[4:]), _VAE_ATTENTION)
    down = block == "down_blocks"
    level = int(parts[2]) if down else up_blocks - 1 - int(parts[2])
    name = "down" if down else "up"
    if parts[3] == "resnets":
        return f"{coder}.{name}.{level}.block.{parts[4]}." + ".".join(parts[5:]).replace(
            "conv_shortcut", "nin_shortcut"
        )
    return f"{coder}.{name}.{level}.{name}sample.conv." + ".".join(parts[6:])


def save_ldm_checkpoint(pipeline: StableDiffusionPipeline, path: Path) -> Path:
    """Saves `pipeline`'s UNet, VAE and CLIP text encoder as one LDM-layout `.safetensors` file at `path`."""
    unet = pipeline.unet.state_dict()
    per_level = pipeline.unet.config.layers_per_block + 1
    # The upsampler follows the resnet (slot 1) or, in a block with attention, the attention (slot 2).
    levels = len(pipeline.unet.config.up_block_types)
    upsampler_slot = {
        level: 2 if any(k.startswith(f"up_blocks.{level}.attentions.") for k in unet) else 1 for level in range(levels)
    }
    checkpoint = {
        "model.diffusion_model." + _unet_key(k, k.split("."), per_level, upsampler_slot): v for k, v in unet.items()
    }
    up_blocks = len(pipeline.vae.config.up_block_types)
    for key, value in pipeline.vae.state_dict().items():
        ldm_key = _vae_key(key, key.split("."), up_blocks)
        # LDM's VAE attention projections are 1x1 convolutions.
        checkpoint["first_stage_model." + ldm_key] = (
            value[:, :, None, None] if ".mid.attn_1." in ldm_key and value.dim() == 2 else value
        )
    for key, value in pipeline.text_encoder.state_dict().items():
        # transformers 5 flattens CLIPTextModel; the LDM layout keeps its `text_model.` level.
        inner = key if key.startswith("text_model.") else "text_model." + key
        checkpoint["cond_stage_model.transformer." + inner] = value
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(path))
    return path


__all__ = ["save_ldm_checkpoint"]
