"""The compile backend: the eager pipeline with its UNet compiled by `torch.compile`.

On a GPU the UNet is compiled with ``mode="reduce-overhead"`` (CUDA graphs: the host CPU no longer
limits small batches) in ``channels_last``, and the VAE decoder is compiled too; on a CPU the UNet is
compiled with inductor's default mode. With shape buckets the compile is static (``dynamic=False``: one
graph per bucket, all compiled by the replica's warm-up); without, inductor specialises on first use.
Inductor's compiled kernels are cached on disk under the backend's cache directory, keyed by torch
version and device model, so later replicas and restarts skip most of the compile time (SD1.5's UNet
takes about 90 s cold on an H100).
"""

from __future__ import annotations

import os
from typing import Any

import torch

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from inference.backends._artifacts import device_model
from inference.backends.base import BackendOptions
from inference.backends.eager import EagerBackend

_INDUCTOR_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


def compile_mode(device: torch.device) -> str:
    """The `torch.compile` mode used on `device`: CUDA graphs on a GPU, inductor's default elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def inductor_cache_dir(options: BackendOptions, device: torch.device) -> str | None:
    """Where inductor keeps its compiled kernels for `device` under the backend's cache (None: its default)."""
    if options.cache_dir is None:
        return None
    return str(options.cache_dir / f"inductor-torch{torch.__version__}-{device_model(device)}".replace(" ", "_"))


class OutputsCloned(torch.nn.Module):
    """Calls a compiled module and returns copies of its tensor outputs, which the next call cannot overwrite.

    A CUDA graph replays into the same output memory every time, so a tensor the caller keeps across
    calls changes under it: diffusers' PNDM scheduler (SD 1.5's default) keeps the raw UNet outputs of
    earlier steps, which, without classifier-free guidance (guidance <= 1), are those very tensors.
    Cloning costs one latent-sized copy per step. Attributes the pipeline reads (``config``, ``dtype``,
    ``add_embedding``, ...) come from the original module.
    """

    def __init__(self, compiled: Any, original: torch.nn.Module, *, cuda_graphs: bool) -> None:
        super().__init__()
        self.compiled = compiled
        # Not registered as a submodule: its parameters are the compiled module's already.
        object.__setattr__(self, "_original", original)
        self._cuda_graphs = cuda_graphs

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_original"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._cuda_graphs:
            # Tells cudagraph trees a new call begins: the previous outputs (cloned) may be reused.
            torch.compiler.cudagraph_mark_step_begin()
        return _clone_tensors(self.compiled(*args, **kwargs))


def _clone_tensors(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple | list):
        return type(value)(_clone_tensors(item) for item in value)
    return value


class CompileBackend(EagerBackend):
    """Runs the pipeline with a `torch.compile`d UNet; the first call of each shape compiles."""

    name: str = "compile"

    def __init__(self, pipeline: DiffusionPipeline, options: BackendOptions | None = None) -> None:
        """Compile `pipeline`'s UNet in place (lazily: the first call of each shape pays the compile).

        Args:
            pipeline: A diffusers pipeline with a ``unet``.
            options: ``cache_dir`` holds inductor's on-disk cache (unset: inductor's default); with
                ``buckets`` the compile is static, one graph per bucket.
        """
        options = options or BackendOptions()
        device = pipeline.device
        if (cache := inductor_cache_dir(options, device)) is not None:
            os.makedirs(cache, exist_ok=True)
            # Read by inductor when it compiles; one replica per process, so one cache per process. Set, not
            # defaulted: inductor writes its own default into the variable the first time it looks.
            os.environ[_INDUCTOR_CACHE_VARIABLE] = cache
        unet = getattr(pipeline, "unet", None)
        if unet is None:
            raise ValueError("the compile backend needs a pipeline with a UNet (SD 1.x/2.x, SDXL).")
        mode = compile_mode(device)
        # Static shapes with buckets (each compiled during warm-up); else inductor's automatic dynamism,
        # since dynamic=False would recompile per new size and fall back to eager past the recompile limit.
        dynamic = False if options.buckets else None
        if device.type == "cuda":
            unet.to(memory_format=torch.channels_last)
            pipeline.vae.to(memory_format=torch.channels_last)
            pipeline.vae.decoder = torch.compile(pipeline.vae.decoder, dynamic=dynamic)
        compiled = torch.compile(unet, mode=mode, dynamic=dynamic)
        pipeline.unet = OutputsCloned(compiled, unet, cuda_graphs=mode == "reduce-overhead")
        super().__init__(pipeline)
