"""The tensorrt backend: UNet and VAE decoder run as TensorRT engines built from the ONNX export.

Engines are built with one optimisation profile covering batch 1..2 x `max_batch_images` (classifier-free
guidance doubles the UNet's batch) and every latent size from `min_size` to `max_size`, in fp16, and
cached on disk keyed by the weights hash, the profile, the GPU model and the TensorRT version; the first
replica builds them under a file lock and every other one loads them.

Choosing this backend where TensorRT or a CUDA GPU is missing fails when the replica starts, with a
message naming what is missing; it never falls back to another backend.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from inference.backends._artifacts import cached_artifact, device_model, weights_hash
from inference.backends.base import BackendOptions, BackendUnavailable
from inference.backends.eager import EagerBackend
from inference.backends.onnx_export import (
    LATENT_SCALE,
    Runner,
    UNetAdapter,
    VaeDecoderAdapter,
    export_unet,
    export_vae_decoder,
    onnx_modules_of,
)

_WORKSPACE_BYTES = 8 * 1024**3


def check_tensorrt_available() -> None:
    """Raises `BackendUnavailable` naming what is missing when TensorRT cannot run here."""
    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the TensorRT Python package (pip install 'atelier[tensorrt]', tensorrt>=10)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU visible to torch (torch.cuda.is_available() is False)")
    if missing:
        raise BackendUnavailable(
            "backend='tensorrt' cannot run on this replica: missing "
            + " and ".join(missing)
            + "; choose backend 'eager', 'compile' or 'onnxruntime' for this model, or run it on a GPU node "
            "with TensorRT installed."
        )


class TensorRTBackend(EagerBackend):
    """Runs the pipeline with the UNet and VAE decoder replaced by TensorRT engines."""

    name: str = "tensorrt"
    # Its engines hold no VAE encoder, which edits need; validation refuses edits for it.
    supports_editing: bool = False

    def __init__(self, pipeline: DiffusionPipeline, options: BackendOptions | None = None) -> None:
        """Build (or load) the engines for `pipeline` and swap them in.

        Raises:
            BackendUnavailable: TensorRT or a CUDA GPU is missing.
            ValueError: The pipeline is not on a CUDA device, or has no UNet and VAE.
        """
        check_tensorrt_available()
        options = options or BackendOptions()
        if pipeline.device.type != "cuda":
            raise ValueError("backend='tensorrt' needs the model on device='cuda'.")
        trt: Any = importlib.import_module("tensorrt")
        unet, vae = onnx_modules_of(pipeline)
        root = options.cache_dir or Path(".atelier/models/compiled")
        max_batch = 2 * options.max_batch_images
        lo, hi = options.min_size // LATENT_SCALE, options.max_size // LATENT_SCALE
        key = {
            "weights": weights_hash(unet, vae),
            "profile": f"batch1-{max_batch}-latent{lo}-{hi}-fp16",
            "device": device_model(pipeline.device),
            "tensorrt": str(trt.__version__),
            "torch": torch.__version__,
        }
        text_dim = int(unet.config.cross_attention_dim)
        channels = int(unet.config.in_channels)

        def build(directory: Path) -> None:
            export_unet(unet, directory / "unet.onnx", text_dim=text_dim)
            export_vae_decoder(vae, directory / "vae_decoder.onnx")
            unet_shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
                "sample": ((1, channels, lo, lo), (max_batch, channels, hi, hi)),
                "timestep": ((1,), (max_batch,)),
                "encoder_hidden_states": ((1, 77, text_dim), (max_batch, 77, text_dim)),
            }
            _build_engine(trt, directory / "unet.onnx", directory / "unet.plan", unet_shapes)
            vae_batch = options.max_batch_images
            vae_shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
                "latents": ((1, channels, lo, lo), (vae_batch, channels, hi, hi))
            }
            _build_engine(trt, directory / "vae_decoder.onnx", directory / "vae_decoder.plan", vae_shapes)

        self.engine_dir = cached_artifact(root, "tensorrt", key, build)
        device = pipeline.device
        unet_runner = _engine_runner(trt, self.engine_dir / "unet.plan", device, unet.dtype)
        vae_runner = _engine_runner(trt, self.engine_dir / "vae_decoder.plan", device, vae.dtype)
        pipeline.unet = UNetAdapter(unet, unet_runner)
        pipeline.vae = VaeDecoderAdapter(vae, vae_runner)
        super().__init__(pipeline)


def _engine_runner(trt: Any, plan_path: Path, device: torch.device, output_dtype: torch.dtype) -> Runner:
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise RuntimeError(f"TensorRT could not load {plan_path}; delete it to rebuild the engine")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
    outputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT]
    dtypes = {trt.DataType.HALF: torch.float16, trt.DataType.FLOAT: torch.float32, trt.DataType.BF16: torch.bfloat16}

    def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        bound = {}  # kept alive until the engine has run
        for name, tensor in inputs.items():
            bound[name] = tensor.to(device=device, dtype=dtypes[engine.get_tensor_dtype(name)]).contiguous()
            context.set_input_shape(name, tuple(bound[name].shape))
            context.set_tensor_address(name, bound[name].data_ptr())
        (output_name,) = outputs
        shape = tuple(context.get_tensor_shape(output_name))
        output = torch.empty(shape, device=device, dtype=dtypes[engine.get_tensor_dtype(output_name)])
        context.set_tensor_address(output_name, output.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream(device).cuda_stream):
            raise RuntimeError(f"TensorRT engine {plan_path.name} failed to run")
        return output.to(output_dtype)

    return run


def _build_engine(
    trt: Any, onnx_path: Path, plan_path: Path, shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]
) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (smallest, largest) in shapes.items():
        middle = tuple((a + b) // 2 for a, b in zip(smallest, largest, strict=True))
        profile.set_shape(name, smallest, middle, largest)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name}")
    plan_path.write_bytes(bytes(serialized))
