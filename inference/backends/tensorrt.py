"""The tensorrt backend: UNet and VAE decoder run as TensorRT engines built from the ONNX export.

Engines are built strongly typed from the model's own dtype (the ONNX export is in that dtype: fp16 or
bf16 models give fp16 or bf16 engines), with one optimisation profile per shape bucket (batch x image
size; classifier-free guidance doubles the UNet's batch), or without buckets one profile covering batch
1..2 x `max_batch_images` and every latent size from `min_size` to `max_size`. Builds share a timing
cache. Engines are cached on disk keyed by the weights hash, the profiles, the GPU model and the
TensorRT, diffusers, torch and export-code versions; the first replica (or `atelier models build`)
builds them under a file lock and every other one loads them.

Engines run on the backend's own CUDA stream, with input and output buffers allocated once per shape and
the engine's launch captured in a CUDA graph per shape (replayed on later calls of that shape).

Choosing this backend where TensorRT or a CUDA GPU is missing fails when the replica starts, with a
message naming what is missing; it never falls back to another backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    UNetAdapter,
    UNetInputs,
    VaeDecoderAdapter,
    export_unet,
    export_vae_decoder,
    export_versions,
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


Shapes = dict[str, tuple[int, ...]]
"""Each input's shape, by input name."""


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: every input's smallest, best and largest shape."""

    smallest: Shapes
    optimal: Shapes
    largest: Shapes


def unet_profiles(inputs: UNetInputs, options: BackendOptions) -> list[Profile]:
    """The UNet engine's profiles: one per bucket (batch doubled for guidance), else one dynamic range."""
    if options.buckets:
        return [
            _fixed(inputs.shapes(2 * batch, height // LATENT_SCALE, width // LATENT_SCALE))
            for batch in options.buckets.batch_sizes
            for width, height in options.buckets.sizes
        ]
    lo, hi = options.min_size // LATENT_SCALE, options.max_size // LATENT_SCALE
    largest = inputs.shapes(2 * options.max_batch_images, hi, hi)
    return [Profile(inputs.shapes(1, lo, lo), largest, largest)]


def vae_profiles(channels: int, options: BackendOptions) -> list[Profile]:
    """The VAE decoder engine's profiles, as `unet_profiles` (no guidance doubling)."""

    def shapes(batch: int, height: int, width: int) -> Shapes:
        return {"latents": (batch, channels, height // LATENT_SCALE, width // LATENT_SCALE)}

    if options.buckets:
        return [_fixed(shapes(b, h, w)) for b in options.buckets.batch_sizes for w, h in options.buckets.sizes]
    largest = shapes(options.max_batch_images, options.max_size, options.max_size)
    return [Profile(shapes(1, options.min_size, options.min_size), largest, largest)]


def _fixed(shapes: Shapes) -> Profile:
    return Profile(shapes, shapes, shapes)


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
        inputs = UNetInputs.of(unet)
        unet_shapes = unet_profiles(inputs, options)
        vae_shapes = vae_profiles(int(vae.config.latent_channels), options)
        device = pipeline.device
        key = {
            "weights": weights_hash(unet, vae),
            "profiles": repr((unet_shapes, vae_shapes)),
            "dtype": str(unet.dtype),
            "device": device_model(device),
            "tensorrt": str(trt.__version__),
            **export_versions(),
        }
        timing_cache = root / f"timing-trt{trt.__version__}-{device_model(device)}.cache".replace(" ", "_")

        def build(directory: Path) -> None:
            export_unet(unet, directory / "unet.onnx")
            export_vae_decoder(vae, directory / "vae_decoder.onnx")
            _build_engine(trt, directory / "unet.onnx", directory / "unet.plan", unet_shapes, timing_cache)
            _build_engine(trt, directory / "vae_decoder.onnx", directory / "vae_decoder.plan", vae_shapes, timing_cache)

        self.engine_dir = cached_artifact(root, "tensorrt", key, build)
        # The replica's own stream: engines never run on (or serialise with) the legacy default stream.
        self.stream = torch.cuda.Stream(device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        unet_runner = EngineRunner(
            trt, _load_engine(runtime, self.engine_dir / "unet.plan"), "unet", device, self.stream
        )
        vae_runner = EngineRunner(
            trt, _load_engine(runtime, self.engine_dir / "vae_decoder.plan"), "vae_decoder", device, self.stream
        )
        pipeline.unet = UNetAdapter(unet, lambda feed: unet_runner(feed).to(unet.dtype))
        pipeline.vae = VaeDecoderAdapter(vae, lambda feed: vae_runner(feed).to(vae.dtype))
        super().__init__(pipeline)


def _load_engine(runtime: Any, plan_path: Path) -> Any:
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise RuntimeError(f"TensorRT could not load {plan_path}; delete its directory to rebuild the engine")
    return engine


class _Bound:
    """One shape's execution context and preallocated buffers (and its CUDA graph, once captured)."""

    def __init__(self, context: Any, buffers: dict[str, torch.Tensor], output: str) -> None:
        self.context = context
        self.buffers = buffers
        self.output = output
        self.graph: Any = None


class EngineRunner:
    """Runs one engine: picks the profile that holds the inputs' shapes, copies them into buffers kept per
    shape, and launches the engine on `stream` (replaying the shape's CUDA graph after its first call).

    The engine needs one execution context per optimisation profile; contexts and buffers are made on a
    shape's first call. Called from the replica's model thread only.
    """

    def __init__(self, trt: Any, engine: Any, name: str, device: torch.device, stream: Any | None) -> None:
        """Wrap a deserialised `engine` (`trt`: the tensorrt module).

        `stream` is the `torch.cuda.Stream` it runs on; None launches on handle 0 with no CUDA graphs (tests
        on a CPU, with a fake engine behind TensorRT's interface).
        """
        self._trt = trt
        self._engine = engine
        self._name = name
        self._device = device
        self._stream = stream
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        (self._output,) = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {
            trt.DataType.HALF: torch.float16,
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.BF16: torch.bfloat16,
            trt.DataType.INT64: torch.int64,
        }
        self._contexts: dict[int, Any] = {}
        self._bound: dict[tuple[tuple[int, ...], ...], _Bound] = {}

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Runs the engine on `inputs` and returns a new tensor with its output.

        Raises:
            ValueError: No profile of the engine holds these shapes (a batch or size past what it was built
                for); the message gives the shapes it takes.
            RuntimeError: The engine failed to run.
        """
        key = tuple(tuple(inputs[name].shape) for name in self._inputs)
        bound = self._bound.get(key) or self._bind({name: tuple(inputs[name].shape) for name in self._inputs})
        self._bound[key] = bound
        if self._stream is None:  # a CPU test through a fake engine
            return self._launch(bound, inputs, 0)
        # The inputs were made on the pipeline's stream: the engine's stream waits for them, reads them
        # (recorded, so the allocator keeps them until it has), and the pipeline's stream waits for the copy
        # of the output made there.
        current = torch.cuda.current_stream(self._device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            for tensor in inputs.values():
                tensor.record_stream(self._stream)
            output = self._launch(bound, inputs, self._stream.cuda_stream)
        current.wait_stream(self._stream)
        output.record_stream(current)
        return output

    def _launch(self, bound: _Bound, inputs: Mapping[str, torch.Tensor], handle: int) -> torch.Tensor:
        """Copies `inputs` in, runs (or replays) the engine on stream `handle`, returns a copy of the output."""
        for name in self._inputs:
            bound.buffers[name].copy_(inputs[name], non_blocking=True)
        if bound.graph is not None:
            bound.graph.replay()
        else:
            if not bound.context.execute_async_v3(handle):
                raise RuntimeError(f"TensorRT engine {self._name} failed to run")
            bound.graph = self._capture(bound, handle)
        return bound.buffers[bound.output].clone()  # the buffer is overwritten by the next call

    def _bind(self, shapes: Mapping[str, tuple[int, ...]]) -> _Bound:
        profile = self._profile_holding(shapes)
        context = self._contexts.get(profile)
        if context is None:
            context = self._engine.create_execution_context()
            if profile:
                context.set_optimization_profile_async(profile, self._stream.cuda_stream if self._stream else 0)
            self._contexts[profile] = context
        buffers: dict[str, torch.Tensor] = {}
        for name, shape in shapes.items():
            if not context.set_input_shape(name, shape):
                raise ValueError(self._outside_profiles(shapes))
            buffers[name] = self._empty(name, shape)
        output_shape = tuple(context.get_tensor_shape(self._output))
        if any(dim < 0 for dim in output_shape):
            raise ValueError(self._outside_profiles(shapes))
        buffers[self._output] = self._empty(self._output, output_shape)
        for name, tensor in buffers.items():
            context.set_tensor_address(name, tensor.data_ptr())
        return _Bound(context, buffers, self._output)

    def _profile_holding(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        for profile in range(self._engine.num_optimization_profiles):
            if all(self._within(name, shape, profile) for name, shape in shapes.items()):
                return profile
        raise ValueError(self._outside_profiles(shapes))

    def _within(self, name: str, shape: tuple[int, ...], profile: int) -> bool:
        smallest, _, largest = self._engine.get_tensor_profile_shape(name, profile)
        return len(shape) == len(smallest) and all(
            lo <= dim <= hi for dim, lo, hi in zip(shape, smallest, largest, strict=True)
        )

    def _outside_profiles(self, shapes: Mapping[str, tuple[int, ...]]) -> str:
        accepted = "; ".join(
            " ".join(
                f"{name} {tuple(lo)}..{tuple(hi)}"
                for name in self._inputs
                for lo, _, hi in [self._engine.get_tensor_profile_shape(name, profile)]
            )
            for profile in range(self._engine.num_optimization_profiles)
        )
        given = " ".join(f"{name} {shape}" for name, shape in shapes.items())
        return (
            f"TensorRT engine {self._name} was not built for {given}; it takes {accepted}. Rebuild it for these "
            f"shapes (the model's buckets, max_batch_size and sizes) with `atelier models build`."
        )

    def _empty(self, name: str, shape: Sequence[int]) -> torch.Tensor:
        return torch.empty(tuple(shape), device=self._device, dtype=self._dtypes[self._engine.get_tensor_dtype(name)])

    def _capture(self, bound: _Bound, handle: int) -> Any:
        """A CUDA graph of the engine's launch on this shape's buffers; None off a GPU."""
        if self._stream is None:
            return None
        # The call above ran once uncaptured, as TensorRT asks before a capture (it sets up lazily).
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            if not bound.context.execute_async_v3(handle):
                raise RuntimeError(f"TensorRT engine {self._name} failed while captured in a CUDA graph")
        return graph


def _build_engine(trt: Any, onnx_path: Path, plan_path: Path, profiles: Sequence[Profile], timing_cache: Path) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: every layer runs in the ONNX graph's own types (the model's fp16 or bf16), instead
    # of the deprecated FP16 flag's guesswork, which also cannot express bf16.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
    # Kernel timings of earlier builds on this GPU model: later builds skip re-timing the same layers.
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name in shapes.smallest:
            profile.set_shape(name, shapes.smallest[name], shapes.optimal[name], shapes.largest[name])
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name}")
    plan_path.write_bytes(bytes(serialized))
    staging = timing_cache.with_suffix(f".tmp-{os.getpid()}")
    staging.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    os.replace(staging, timing_cache)
