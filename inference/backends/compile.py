"""The compile backend: the eager pipeline with its UNet compiled by `torch.compile`.

On a GPU the UNet is compiled with ``mode="reduce-overhead"`` (CUDA graphs: the host CPU no longer
limits small batches); on a CPU with inductor's default mode. Inductor's compiled kernels are cached on
disk under the backend's cache directory, keyed by torch version and device model, so later replicas
and restarts skip most of the compile time (SD1.5's UNet takes about 90 s cold on an H100).
"""

from __future__ import annotations

import os

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


class CompileBackend(EagerBackend):
    """Runs the pipeline with a `torch.compile`d UNet; the first call of each shape compiles."""

    name: str = "compile"

    def __init__(self, pipeline: DiffusionPipeline, options: BackendOptions | None = None) -> None:
        """Compile `pipeline`'s UNet in place (lazily: the first call of each shape pays the compile).

        Args:
            pipeline: A diffusers pipeline with a ``unet``.
            options: ``cache_dir`` holds inductor's on-disk cache; unset uses inductor's default.
        """
        options = options or BackendOptions()
        if options.cache_dir is not None:
            device = pipeline.device
            cache = options.cache_dir / f"inductor-torch{torch.__version__}-{device_model(device)}".replace(" ", "_")
            cache.mkdir(parents=True, exist_ok=True)
            # Read by inductor when it first compiles; one replica per process, so one cache per process.
            os.environ.setdefault(_INDUCTOR_CACHE_VARIABLE, str(cache))
        unet = getattr(pipeline, "unet", None)
        if unet is None:
            raise ValueError("the compile backend needs a pipeline with a UNet (SD 1.x/2.x, SDXL).")
        pipeline.unet = torch.compile(unet, mode=compile_mode(pipeline.device))
        super().__init__(pipeline)
