"""Exports a Stable Diffusion pipeline's text encoder, UNet and VAE decoder to ONNX, and swaps runners in.

Shared by the onnxruntime and tensorrt backends: both export with `torch.onnx` (the TorchScript exporter,
opset 17, dynamic batch and latent size) and put small `torch.nn.Module` adapters in the pipeline where
the components were, so diffusers' own denoising loop (schedulers, guidance, callbacks) runs unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

OPSET = 17
# SD-family VAEs downsample by 8: latents are 1/8 of the image's side.
LATENT_SCALE = 8

Runner = Callable[[dict[str, torch.Tensor]], torch.Tensor]
"""Runs one exported graph: named input tensors in, its single output out."""


def onnx_modules_of(pipeline: DiffusionPipeline) -> tuple[Any, Any]:
    """The pipeline's UNet and VAE, checked to be the kinds the export supports.

    Raises:
        ValueError: The pipeline is not an SD 1.x/2.x-style pipeline (UNet, VAE, one CLIP text encoder).
    """
    unet = getattr(pipeline, "unet", None)
    vae = getattr(pipeline, "vae", None)
    if unet is None or vae is None or getattr(pipeline, "text_encoder_2", None) is not None:
        raise ValueError(
            f"ONNX export supports Stable Diffusion 1.x/2.x pipelines (one text encoder, a UNet, a VAE); "
            f"{type(pipeline).__name__} is not one: use backend 'eager' or 'compile' for it."
        )
    if unet.config.time_cond_proj_dim is not None or unet.config.addition_embed_type is not None:
        raise ValueError("ONNX export supports UNets without extra conditioning; use backend 'eager' or 'compile'.")
    return unet, vae


class _UNetGraph(torch.nn.Module):
    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> Any:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


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


def export_unet(unet: Any, path: Path, *, text_dim: int) -> None:
    """Exports the UNet as ``(sample, timestep[batch], encoder_hidden_states) -> noise``, batch and size dynamic."""
    device, dtype = unet.device, unet.dtype
    channels = int(unet.config.in_channels)
    args = (
        torch.randn(2, channels, 8, 8, device=device, dtype=dtype),
        torch.full((2,), 999.0, device=device, dtype=torch.float32),
        torch.randn(2, 77, text_dim, device=device, dtype=dtype),
    )
    spatial = {0: "batch", 2: "height", 3: "width"}
    dynamic = {"sample": spatial, "timestep": {0: "batch"}, "encoder_hidden_states": {0: "batch"}, "output": spatial}
    _export(_UNetGraph(unet).eval(), args, path, ["sample", "timestep", "encoder_hidden_states"], dynamic)


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
        if timestep_cond is not None or cross_attention_kwargs or added_cond_kwargs:
            raise ValueError("the exported UNet takes no extra conditioning (LoRA scale, IP-Adapter, ...)")
        # One timestep per row: a scalar exported as such bakes the tracing batch into the graph.
        step = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device).reshape(-1)
        step = step.expand(sample.shape[0]).contiguous()
        inputs = {"sample": sample, "timestep": step, "encoder_hidden_states": encoder_hidden_states}
        return (self._run(inputs),)


class TextEncoderAdapter(_Adapter):
    """Called as diffusers calls a CLIPTextModel; returns ``(last_hidden_state,)``."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        return (self._run({"input_ids": input_ids.to(torch.int64)}),)


class VaeDecoderAdapter(_Adapter):
    """Offers ``decode`` as AutoencoderKL does; returns ``(image,)``."""

    def decode(self, latents: torch.Tensor, return_dict: bool = False, generator: Any = None) -> tuple[torch.Tensor]:
        return (self._run({"latents": latents}),)
