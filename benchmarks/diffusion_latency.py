"""How fast does one replica generate? Seconds per image, images/s, UNet ms/step and MFU per backend.

Every figure goes through the replica's own code: its backend (with the shape buckets of the workload,
padded batches, warm-up before timing), its `BatchScheduler` on its one model thread, and its step
timings (CUDA events on a GPU). Next to them, in the same run, plain diffusers eager: the pipeline called
as diffusers documents it, nothing of atelier's.

GPU mode builds architecture-accurate random-weight pipelines from the published configs of SD 1.5
(512x512, 50 steps, batch 1 and `--batch`) and SDXL (1024x1024, 30 steps, batch 1) in fp16 — no weights
are downloaded; speed depends only on the shapes. The CPU tiny mode runs tiny-sd (64x64) the same way; it
is what the tests run. MFU counts the UNet's FLOPs per step (torch.utils.flop_counter on one call) over
the UNet's share of the time against the device's dense peak (--peak-tflops; 989 for an H100 SXM in
bf16/fp16).

    python benchmarks/diffusion_latency.py --tiny --json                  # CPU, tiny-sd, as the tests run it
    PYTHONPATH=. python benchmarks/diffusion_latency.py --backends eager compile tensorrt   # a GPU machine

On a GPU machine that has torch and transformers but not this project's install, carry a diffusers
wheel (and onnx/tensorrt for those backends) and run from the repository root; see the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from inference.backends import (
    BackendOptions,
    BackendUnavailable,
    BucketedBackend,
    GenerationParams,
    ShapeBuckets,
    create_backend,
)
from inference.deployments.batching import BatchedResult, BatchScheduler, ModelThread

# Published configs (diffusers' unet/vae/text_encoder config.json of the reference checkpoints), the
# fields that set the shapes; the rest take diffusers' defaults, which match those checkpoints.
SD15_UNET = {
    "sample_size": 64,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "layers_per_block": 2,
}
SDXL_UNET = {
    "sample_size": 128,
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "use_linear_projection": True,
    "layers_per_block": 2,
}
SD_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
}
WORKLOADS = {"sd15": (512, 50), "sdxl": (1024, 30), "tiny-sd": (64, 20)}
# Batch sizes measured per model besides 1 (`--batch`); SDXL at 1024x1024 is measured at batch 1 only.
BATCHED = {"sd15": True, "sdxl": False, "tiny-sd": True}
GUIDANCE = 7.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU mode: tiny-sd at 64x64")
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=sorted(WORKLOADS))
    parser.add_argument("--backends", nargs="+", default=["eager", "compile", "onnxruntime", "tensorrt"])
    parser.add_argument("--steps", type=int, help="override the workload's steps")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the throughput run")
    parser.add_argument("--iterations", type=int, default=3, help="timed runs per figure")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device dense fp16/bf16 peak")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "atelier-bench-models")
    parser.add_argument("--no-baseline", action="store_true", help="leave out plain diffusers eager")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    models = ["tiny-sd"] if args.tiny else args.models
    backends = [b for b in args.backends if not (args.tiny and b == "tensorrt")]
    if args.tiny:
        torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for model in models:
        size, steps = WORKLOADS[model]
        steps = args.steps or steps
        if not args.no_baseline:
            rows.append(_measure_plain_diffusers(model, device, size, steps, args))
        for backend_name in backends:
            rows.append(_measure(model, backend_name, device, size, steps, args))
            _release(device)
    report = {"device": _device_name(device), "torch": torch.__version__, "results": rows}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"device: {report['device']}  torch {report['torch']}")
        for row in rows:
            print("  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def _measure(model: str, backend_name: str, device: str, size: int, steps: int, args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """One backend through the replica's code: buckets, warm-up and scheduler on one model thread."""
    row: dict[str, Any] = {"model": model, "backend": backend_name, "size": size, "steps": steps}
    batches = (1, args.batch) if BATCHED[model] and args.batch > 1 else (1,)
    pipeline = _pipeline(model, device)
    unet_flops = _unet_flops_per_step(pipeline, size, device)
    model_thread = ModelThread(f"bench-{backend_name}")
    options = BackendOptions(
        cache_dir=args.cache_dir / "compiled",
        max_batch_images=max(batches),
        min_size=size,
        max_size=size,
        buckets=ShapeBuckets(batch_sizes=batches, sizes=((size, size),)),
    )

    def ready_backend() -> Any:
        backend = create_backend(backend_name, pipeline, options)
        if isinstance(backend, BucketedBackend):
            backend.warm_up(GUIDANCE)
        else:  # eager: nothing to build; one call warms the allocator and cuDNN's autotuner
            for batch in batches:
                backend.generate_batch([_params(size, steps, seed) for seed in range(batch)])
        return backend

    warm_started = time.perf_counter()
    try:
        backend = model_thread.call(ready_backend)
    except (BackendUnavailable, ValueError) as exc:
        row["skipped"] = str(exc).split(";")[0]
        model_thread.shutdown()
        return row
    row["warmup_s"] = round(time.perf_counter() - warm_started, 2)
    scheduler = BatchScheduler(
        backend, max_batch_images=max(batches), model_thread=model_thread, cuda_timing=device == "cuda"
    )
    rows_per_image = 2 if GUIDANCE > 1 else 1  # classifier-free guidance runs the UNet on two rows
    for batch in batches:
        timings = [_timed_batch(scheduler, size, steps, batch) for _ in range(args.iterations)]
        seconds = statistics.median(wall for wall, _ in timings)
        denoise_s = statistics.median(result.denoise_ms for _, result in timings) / 1000
        suffix = "" if batch == 1 else f"_batch{batch}"
        row[f"s_per_image{suffix}"] = round(seconds / batch, 4)
        row[f"images_per_s{suffix}"] = round(batch / seconds, 3)
        row[f"unet_ms_per_step{suffix}"] = round(denoise_s / steps * 1000, 2)
        achieved = rows_per_image * batch * unet_flops * steps / denoise_s
        row[f"mfu{suffix}"] = round(achieved / (args.peak_tflops * 1e12), 4) if device == "cuda" else None
    row["it_per_s"] = round(steps / (row["s_per_image"]), 2)
    row["unet_gflops_per_step"] = round(unet_flops / 1e9, 2)
    model_thread.shutdown()
    return row


def _timed_batch(scheduler: BatchScheduler, size: int, steps: int, batch: int) -> tuple[float, BatchedResult]:
    """Wall seconds of `batch` concurrent one-image requests (one pipeline call), and the first's result."""

    async def run() -> list[BatchedResult]:
        # Enqueued together before the scheduler's drainer runs: one call of `batch` images.
        return await asyncio.gather(*(scheduler.run(_params(size, steps, seed)) for seed in range(batch)))

    started = time.perf_counter()
    results = asyncio.run(run())
    wall = time.perf_counter() - started
    if any(result.batch_images != batch for result in results):
        raise RuntimeError(f"expected one pipeline call of {batch} images, got {[r.batch_images for r in results]}")
    return wall, results[0]


def _measure_plain_diffusers(model: str, device: str, size: int, steps: int, args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """The baseline: the pipeline called as diffusers documents it, nothing of atelier's in the loop."""
    row: dict[str, Any] = {"model": model, "backend": "diffusers-eager", "size": size, "steps": steps}
    pipeline = _pipeline(model, device)
    batches = (1, args.batch) if BATCHED[model] and args.batch > 1 else (1,)
    for batch in batches:

        def call(batch: int = batch) -> float:
            generator = torch.Generator(device).manual_seed(0)
            _synchronize(device)
            started = time.perf_counter()
            pipeline(
                prompt=["a lighthouse at dusk, oil painting"] * batch, num_inference_steps=steps,
                guidance_scale=GUIDANCE, height=size, width=size, generator=generator,
            )  # fmt: skip
            _synchronize(device)
            return time.perf_counter() - started

        call()  # warm-up
        seconds = statistics.median(call() for _ in range(args.iterations))
        suffix = "" if batch == 1 else f"_batch{batch}"
        row[f"s_per_image{suffix}"] = round(seconds / batch, 4)
        row[f"images_per_s{suffix}"] = round(batch / seconds, 3)
    _release(device)
    return row


def _pipeline(model: str, device: str) -> Any:
    if model == "tiny-sd":
        from inference.models import build_tiny_sd

        return build_tiny_sd(seed=0).to(device)
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from inference.models.tiny_sd import build_tokenizer

    dtype = torch.float16 if device == "cuda" else torch.float32
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    tokenizer = build_tokenizer()
    with torch.device(device):
        vae = AutoencoderKL(**SD_VAE, scaling_factor=0.18215 if model == "sd15" else 0.13025)
        if model == "sd15":
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

            text = CLIPTextModel(_clip_config(CLIPTextConfig, tokenizer, 768, 12, 12, 3072))
            unet = UNet2DConditionModel(**SD15_UNET)
            pipe: Any = StableDiffusionPipeline(
                vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )  # fmt: skip
        else:
            from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
                StableDiffusionXLPipeline,
            )

            text = CLIPTextModel(_clip_config(CLIPTextConfig, tokenizer, 768, 12, 12, 3072))
            text_2 = CLIPTextModelWithProjection(
                _clip_config(CLIPTextConfig, tokenizer, 1280, 32, 20, 5120, projection_dim=1280)
            )
            unet = UNet2DConditionModel(**SDXL_UNET)
            pipe = StableDiffusionXLPipeline(
                vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
                unet=unet, scheduler=scheduler,
            )  # fmt: skip
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip_config(
    config_class: Any, tokenizer: Any, hidden: int, layers: int, heads: int, mlp: int, **extra: Any
) -> Any:
    return config_class(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=mlp, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act="gelu", **extra,
    )  # fmt: skip


def _unet_flops_per_step(pipeline: Any, size: int, device: str) -> float:
    """FLOPs of one UNet call on one image row (counted by torch's FLOP counter on a real call)."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipeline.unet
    latent = size // 8
    dtype = unet.dtype
    sample = torch.randn(1, unet.config.in_channels, latent, latent, device=device, dtype=dtype)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    kwargs: dict[str, Any] = {}
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 1280, device=device, dtype=dtype),
            "time_ids": torch.zeros(1, 6, device=device, dtype=dtype),
        }
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        unet(sample, torch.tensor(999.0, device=device), encoder_hidden_states=context, **kwargs)
    return float(counter.get_total_flops())


def _params(size: int, steps: int, seed: int) -> GenerationParams:
    return GenerationParams(
        prompt="a lighthouse at dusk, oil painting", negative_prompt="", width=size, height=size,
        steps=steps, guidance_scale=GUIDANCE, seed=seed, num_images=1,
    )  # fmt: skip


def _release(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    sys.exit(main())
