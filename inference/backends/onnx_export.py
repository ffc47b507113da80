"""Exports a Stable Diffusion pipeline's text encoder, UNet and VAE decoder to ONNX, and swaps runners in.

Shared by the onnxruntime and tensorrt backends: both export with `torch.onnx` (the TorchScript exporter,
opset 17, dynamic batch and latent size) and put small `torch.nn.Module` adapters in the pipeline where
the components were, so diffusers' own denoising loop (schedulers, guidance, callbacks) runs unchanged.
SD 1.x/2.x and SDXL UNets export (SDXL's with its added ``text_embeds``/``time_ids`` conditioning).

The UNet is traced at a latent size that its upsamplers cannot reach by doubling (neither side a
multiple of the UNet's overall downsampling factor): diffusers then passes every upsampler the size of
its skip connection, so the traced graph reads those sizes from the tensors and works at every latent
size. Traced at a multiple (8x8), the graph would double blindly and fail at a 72x72 image (latent 9,
downsampled to 5, doubled to 10).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

OPSET = 17
# SD-family VAEs downsample by 8: latents are 1/8 of the image's side.
LATENT_SCALE = 8

Runner = Callable[[dict[str, torch.Tensor]], torch.Tensor]
"""Runs one exported graph: named input tensors in, its single output out."""


# SDXL's micro-conditioning: original size, crop top-left and target size, two numbers each.
_TIME_IDS = 6


def onnx_modules_of(pipeline: DiffusionPipeline) -> tuple[Any, Any]:
    """The pipeline's UNet and VAE, checked to be the kinds the export supports.

    Raises:
        ValueError: The pipeline is not an SD 1.x/2.x or SDXL-style pipeline (a UNet and a VAE, a UNet
            with no added conditioning but SDXL's ``text_time``).
    """
    unet = getattr(pipeline, "unet", None)
    vae = getattr(pipeline, "vae", None)
    if unet is None or vae is None:
        raise ValueError(
            f"ONNX export supports Stable Diffusion 1.x/2.x and SDXL pipelines (a UNet and a VAE); "
            f"{type(pipeline).__name__} is not one: use backend 'eager' or 'compile' for it."
        )
    if unet.config.time_cond_proj_dim is not None or unet.config.addition_embed_type not in (None, "text_time"):
        raise ValueError(
            "ONNX export supports UNets without extra conditioning but SDXL's text_embeds/time_ids; "
            "use backend 'eager' or 'compile'."
        )
    return unet, vae


@dataclass(frozen=True)
class UNetInputs:
    """The exported UNet's inputs: names in graph order and each one's shape for a batch and latent size."""

    channels: int
    tokens: int
    text_dim: int
    text_embeds_dim: int | None
    """SDXL's pooled text embedding width (its ``add_embedding`` input less the time ids); None for SD 1.x/2.x."""

    @classmethod
    def of(cls, unet: Any, *, tokens: int = 77) -> UNetInputs:
        config = unet.config
        embeds = None
        if config.addition_embed_type == "text_time":
            embeds = int(config.projection_class_embeddings_input_dim) - _TIME_IDS * int(config.addition_time_embed_dim)
        return cls(int(config.in_channels), tokens, int(config.cross_attention_dim), embeds)

    @property
    def names(self) -> list[str]:
        added = ["text_embeds", "time_ids"] if self.text_embeds_dim is not None else []
        return ["sample", "timestep", "encoder_hidden_states", *added]

    def shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """Each input's shape for `batch` rows of `height` x `width` latents."""
        shapes: dict[str, tuple[int, ...]] = {
            "sample": (batch, self.channels, height, width),
            "timestep": (batch,),
            "encoder_hidden_states": (batch, self.tokens, self.text_dim),
        }
        if self.text_embeds_dim is not None:
            shapes["text_embeds"] = (batch, self.text_embeds_dim)
            shapes["time_ids"] = (batch, _TIME_IDS)
        return shapes


class _UNetGraph(torch.nn.Module):
    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> Any:
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]


class _TextEncoderGraph(torch.nn.Module):
    def __init__(self, text_encoder: Any) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> Any:
        return self.text_encoder(input_ids, return_dict=False)[0]


class _VaeDecoderGraph(torch.nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> Any:
        return self.vae.decode(latents, return_dict=False)[0]


def _export(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    names: list[str],
    dynamic: dict[str, dict[int, str]],
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python-level shape check in diffusers; they hold for the profiles.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=["output"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )


def tracing_latent_size(unet: Any) -> tuple[int, int]:
    """A (height, width) latent size neither of whose sides is a multiple of the UNet's downsampling factor.

    Traced there, every upsampler takes its skip connection's size (see the module's docstring).
    """
    factor = 2 ** int(unet.num_upsamplers)
    return factor + 1, 2 * factor + 1


def export_unet(unet: Any, path: Path) -> None:
    """Exports the UNet as ``(sample, timestep[batch], encoder_hidden_states[, text_embeds, time_ids]) -> noise``.

    Batch and latent size are dynamic; every latent size works (traced at `tracing_latent_size`).
    """
    device, dtype = unet.device, unet.dtype
    inputs = UNetInputs.of(unet)
    height, width = tracing_latent_size(unet)
    args = tuple(
        torch.full(shape, 999.0, device=device, dtype=torch.float32)
        if name == "timestep"
        else torch.randn(shape, device=device, dtype=dtype)
        for name, shape in inputs.shapes(2, height, width).items()
    )
    spatial = {0: "batch", 2: "height", 3: "width"}
    dynamic = {name: {0: "batch"} for name in inputs.names} | {"sample": spatial, "output": spatial}
    _export(_UNetGraph(unet).eval(), args, path, inputs.names, dynamic)


def export_text_encoder(text_encoder: Any, path: Path, *, max_tokens: int) -> None:
    """Exports the CLIP text encoder as ``input_ids -> last_hidden_state``, batch dynamic."""
    args = (torch.zeros(2, max_tokens, dtype=torch.int64, device=text_encoder.device),)
    dynamic = {"input_ids": {0: "batch"}, "output": {0: "batch"}}
    _export(_TextEncoderGraph(text_encoder).eval(), args, path, ["input_ids"], dynamic)


def export_vae_decoder(vae: Any, path: Path) -> None:
    """Exports the VAE decoder as ``latents -> image``, batch and size dynamic."""
    channels = int(vae.config.latent_channels)
    args = (torch.randn(1, channels, 8, 8, device=vae.device, dtype=vae.dtype),)
    spatial = {0: "batch", 2: "height", 3: "width"}
    _export(_VaeDecoderGraph(vae).eval(), args, path, ["latents"], {"latents": spatial, "output": spatial})


# Bump when the export changes what it writes (inputs, tracing size, opset): part of every cache key.
EXPORT_VERSION = 2


def export_versions() -> dict[str, str]:
    """The versions an exported graph (and an engine built from it) depends on, for cache keys."""
    return {"export": str(EXPORT_VERSION), "diffusers": diffusers.__version__, "torch": torch.__version__}


class _Adapter(torch.nn.Module):
    """Stands where a diffusers component was: its config, device and dtype, with a runner for compute."""

    def __init__(self, original: Any, run: Runner) -> None:
        super().__init__()
        self.config = original.config
        self._device = original.device
        self._dtype = original.dtype
        self._run = run

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype


class UNetAdapter(_Adapter):
    """Called as diffusers calls a UNet2DConditionModel; returns ``(noise,)``."""

    def __init__(self, original: Any, run: Runner) -> None:
        super().__init__(original, run)
        # SDXL's pipeline checks the added-conditioning width against this layer's input (a few KiB).
        if getattr(original, "add_embedding", None) is not None:
            self.add_embedding = original.add_embedding

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, Any] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        added = dict(added_cond_kwargs or {})
        if timestep_cond is not None or cross_attention_kwargs or set(added) - {"text_embeds", "time_ids"}:
            raise ValueError("the exported UNet takes no extra conditioning (LoRA scale, IP-Adapter, ...)")
        # One timestep per row: a scalar exported as such bakes the tracing batch into the graph.
        step = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device).reshape(-1)
        step = step.expand(sample.shape[0]).contiguous()
        inputs = {"sample": sample, "timestep": step, "encoder_hidden_states": encoder_hidden_states}
        # SDXL: the pipeline passes time_ids in the model's dtype already; the graph takes that dtype.
        inputs.update({name: tensor.to(sample.dtype) for name, tensor in added.items()})
        return (self._run(inputs),)


class TextEncoderAdapter(_Adapter):
    """Called as diffusers calls a CLIPTextModel; returns ``(last_hidden_state,)``."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        return (self._run({"input_ids": input_ids.to(torch.int64)}),)


class VaeDecoderAdapter(_Adapter):
    """Offers ``decode`` as AutoencoderKL does; returns ``(image,)``."""

    def decode(self, latents: torch.Tensor, return_dict: bool = False, generator: Any = None) -> tuple[torch.Tensor]:
        return (self._run({"latents": latents}),)
