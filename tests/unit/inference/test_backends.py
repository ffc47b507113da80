"""Backends behind one interface: compile and onnxruntime give eager's images; tensorrt refuses clearly
where it cannot run; compiled artefacts are built once and reused."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import PNDMScheduler

from inference.backends import (
    BACKEND_NAMES,
    BackendOptions,
    BackendUnavailable,
    EagerBackend,
    GenerationParams,
    create_backend,
)
from inference.backends._artifacts import cached_artifact, weights_hash
from inference.backends.compile import OutputsCloned
from inference.config import BACKENDS, ConfigError, ModelConfig
from inference.generation import IMAGE_TO_IMAGE, ImageEdit
from inference.models import build_tiny_sd, build_tiny_sdxl
from tests.unit.inference.conftest import _pixels

MakeParams = Callable[..., GenerationParams]


def _gradient_png() -> bytes:
    yy, xx = np.mgrid[0:64, 0:64]
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _max_pixel_difference(first: list, second: list) -> int:  # type: ignore[type-arg]
    assert len(first) == len(second)
    return max(int(np.abs(_pixels(a) - _pixels(b)).max()) for a, b in zip(first, second, strict=True))


class TestSelection:
    def test_config_lists_exactly_the_backends_that_exist(self) -> None:
        assert BACKENDS == BACKEND_NAMES

    def test_unknown_backend_in_config_lists_the_valid_names(self) -> None:
        with pytest.raises(ConfigError) as raised:
            ModelConfig(name="m", backend="turbo")
        for name in BACKEND_NAMES:
            assert name in str(raised.value)

    def test_tensorrt_without_gpu_or_library_fails_at_start_naming_what_is_missing(self) -> None:
        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present: this checks the refusal where one is not")
        with pytest.raises(BackendUnavailable) as raised:
            create_backend("tensorrt", build_tiny_sd(seed=0))
        message = str(raised.value)
        assert "tensorrt" in message and "CUDA GPU" in message
        assert "eager" in message, "the message says what to choose instead"


class TestOnnxRuntime:
    def test_images_are_close_to_eager_at_every_size_validation_allows_and_several_batches(
        self, eager_backend, make_params: MakeParams, tmp_path: Path
    ) -> None:
        onnx = create_backend("onnxruntime", build_tiny_sd(seed=0), BackendOptions(cache_dir=tmp_path))
        assert onnx.name == "onnxruntime"
        # 72x72 is a 9x9 latent, which the UNet downsamples to 5 and must upsample back to 9, not 10.
        for params in (
            make_params(width=72, height=72),
            make_params(width=80, height=80),
            make_params(width=128, height=64, num_images=2, negative_prompt="blurry"),
        ):
            assert _max_pixel_difference(onnx.generate(params), eager_backend.generate(params)) <= 1

    def test_sdxl_with_its_added_conditioning_is_close_to_eager(self, make_params: MakeParams, tmp_path: Path) -> None:
        onnx = create_backend("onnxruntime", build_tiny_sdxl(seed=0), BackendOptions(cache_dir=tmp_path))
        eager = EagerBackend(build_tiny_sdxl(seed=0))
        for params in (make_params(width=72, height=64, num_images=2), make_params(guidance_scale=1.0)):
            assert _max_pixel_difference(onnx.generate(params), eager.generate(params)) <= 1

    def test_export_is_cached_and_reused_by_the_next_replica(self, tmp_path: Path) -> None:
        first = create_backend("onnxruntime", build_tiny_sd(seed=0), BackendOptions(cache_dir=tmp_path))
        exported = {p: p.stat().st_mtime_ns for p in first.export_dir.glob("*.onnx")}  # type: ignore[attr-defined]
        assert {p.name for p in exported} == {"text_encoder.onnx", "unet.onnx", "vae_decoder.onnx"}
        second = create_backend("onnxruntime", build_tiny_sd(seed=0), BackendOptions(cache_dir=tmp_path))
        assert second.export_dir == first.export_dir  # type: ignore[attr-defined]
        assert {p: p.stat().st_mtime_ns for p in first.export_dir.glob("*.onnx")} == exported  # type: ignore[attr-defined]
        other = create_backend("onnxruntime", build_tiny_sd(seed=1), BackendOptions(cache_dir=tmp_path))
        assert other.export_dir != first.export_dir, "other weights get their own export"  # type: ignore[attr-defined]


class TestCompile:
    def test_image_is_eagers_within_tolerance(
        self, eager_backend, make_params: MakeParams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The backend points inductor's cache at its cache dir; undone after the test.
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        compiled = create_backend("compile", build_tiny_sd(seed=0), BackendOptions(cache_dir=tmp_path))
        assert compiled.name == "compile"
        params = make_params(steps=2)
        assert _max_pixel_difference(compiled.generate(params), eager_backend.generate(params)) <= 1
        # Edits run the same compiled UNet (same shapes: no second compile) through diffusers' img2img.
        assert isinstance(compiled, EagerBackend)
        assert compiled.edit_pipeline(IMAGE_TO_IMAGE).unet is compiled.pipeline.unet
        assert type(compiled.pipeline.unet.compiled).__name__ == "OptimizedModule"
        edit = make_params(steps=2, edit=ImageEdit(init_png=_gradient_png(), strength=1.0))
        assert _max_pixel_difference(compiled.generate(edit), eager_backend.generate(edit)) <= 1

    def test_outputs_a_graph_replay_overwrites_are_cloned_before_pndm_keeps_them(self, make_params: MakeParams) -> None:
        # A CUDA graph replays into one output buffer; PNDM keeps earlier raw UNet outputs, which
        # (without classifier-free guidance) are that buffer. Simulated here on the CPU.
        class ReplaysIntoOneBuffer(torch.nn.Module):
            def __init__(self, unet: torch.nn.Module) -> None:
                super().__init__()
                self.unet = unet
                self.buffer: torch.Tensor | None = None
                self.config, self.device, self.dtype = unet.config, unet.device, unet.dtype

            def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                (noise,) = self.unet(*args, **kwargs)
                if self.buffer is None or self.buffer.shape != noise.shape:
                    self.buffer = torch.empty_like(noise)
                self.buffer.copy_(noise)
                return (self.buffer,)

        def pndm_pipeline():  # type: ignore[no-untyped-def]
            pipeline = build_tiny_sd(seed=0)
            pipeline.scheduler = PNDMScheduler.from_config(pipeline.scheduler.config, skip_prk_steps=True)
            return pipeline

        params = make_params(steps=5, guidance_scale=1.0)
        expected = EagerBackend(pndm_pipeline()).generate(params)
        overwritten = pndm_pipeline()
        overwritten.unet = ReplaysIntoOneBuffer(overwritten.unet)
        assert _max_pixel_difference(EagerBackend(overwritten).generate(params), expected) > 1, "the defect is real"
        cloned = pndm_pipeline()
        cloned.unet = OutputsCloned(ReplaysIntoOneBuffer(cloned.unet), cloned.unet, cuda_graphs=False)
        assert _max_pixel_difference(EagerBackend(cloned).generate(params), expected) == 0


class TestArtifactCache:
    def test_concurrent_builders_build_once(self, tmp_path: Path) -> None:
        builds: list[int] = []

        def build(directory: Path) -> None:
            builds.append(1)
            time.sleep(0.3)  # long enough for the other thread to reach the lock
            (directory / "engine.plan").write_text("engine")

        results: list[Path] = []
        threads = [
            threading.Thread(target=lambda: results.append(cached_artifact(tmp_path, "trt", {"k": 1}, build)))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(builds) == 1
        assert len(set(results)) == 1 and (results[0] / "engine.plan").read_text() == "engine"

    def test_a_failed_build_leaves_nothing_behind(self, tmp_path: Path) -> None:
        def failing(directory: Path) -> None:
            (directory / "half.plan").write_text("x")
            raise RuntimeError("out of memory")

        with pytest.raises(RuntimeError):
            cached_artifact(tmp_path, "trt", {"k": 2}, failing)
        assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []

    def test_weights_hash_changes_with_the_weights(self) -> None:
        first, second = build_tiny_sd(seed=0), build_tiny_sd(seed=1)
        assert weights_hash(first.unet) == weights_hash(build_tiny_sd(seed=0).unet)
        assert weights_hash(first.unet) != weights_hash(second.unet)
