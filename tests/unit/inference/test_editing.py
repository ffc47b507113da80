"""Image-to-image and inpainting on the real tiny-sd pipeline: what strength and masks measurably do.

tiny-sd's weights are random, so its VAE does not reproduce an image: encoding then decoding gives a
different picture. "Close to the init image" is therefore measured against what the pipeline itself
starts from, the VAE round trip of the init image with the request's seed (the best any SD edit can
keep), and by how much the output depends on the init image at all.
"""

from __future__ import annotations

import asyncio
import importlib
import io
from collections.abc import Callable

import numpy as np
import PIL.Image
import pytest
import torch

from inference.backends import EagerBackend, GenerationParams
from inference.config import BACKENDS, EDITING_BACKENDS
from inference.deployments.batching import BatchScheduler
from inference.generation import IMAGE_TO_IMAGE, INPAINT, ImageEdit, batch_key
from inference.models import build_tiny_sd
from tests.unit.inference.conftest import _pixels

MakeParams = Callable[..., GenerationParams]
SIZE = 64


def _png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _gradient(flip: bool = False) -> PIL.Image.Image:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    if flip:
        pixels = np.stack([255 - xx * 4, np.full_like(xx, 30), yy * 4], -1)
    else:
        pixels = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1)
    return PIL.Image.fromarray(pixels.astype(np.uint8))


INIT_A = _png(_gradient())
INIT_B = _png(_gradient(flip=True))
# Repaint the right half, keep the left half.
_HALF = np.zeros((SIZE, SIZE), dtype=np.uint8)
_HALF[:, SIZE // 2 :] = 255
MASK_RIGHT = _png(PIL.Image.fromarray(_HALF))


def _distance(first: PIL.Image.Image | np.ndarray, second: PIL.Image.Image | np.ndarray) -> float:
    """Mean absolute difference in levels of 0..255."""
    a = first if isinstance(first, np.ndarray) else _pixels(first)
    b = second if isinstance(second, np.ndarray) else _pixels(second)
    return float(np.abs(a.astype(np.float64) - b).mean())


def _vae_round_trip(backend: EagerBackend, init_png: bytes, seed: int) -> np.ndarray:
    """The init image encoded (sampled with the request's generator, as the pipeline does) and decoded."""
    pipeline = backend.edit_pipeline(IMAGE_TO_IMAGE)
    image = PIL.Image.open(io.BytesIO(init_png)).convert("RGB")
    with torch.inference_mode():
        tensor = pipeline.image_processor.preprocess(image)
        latents = pipeline.vae.encode(tensor).latent_dist.sample(torch.Generator().manual_seed(seed))
        decoded = pipeline.vae.decode(latents).sample
    return _pixels(pipeline.image_processor.postprocess(decoded, output_type="pil")[0])


def _edit(make_params: MakeParams, init: bytes, strength: float, mask: bytes | None = None, **fields: object):  # type: ignore[no-untyped-def]
    fields.setdefault("steps", 10)
    return make_params(edit=ImageEdit(init_png=init, strength=strength, mask_png=mask), **fields)


class TestPipelines:
    def test_edit_pipelines_share_the_loaded_modules(self, eager_backend: EagerBackend) -> None:
        base = eager_backend.pipeline
        for mode, class_name in (
            (IMAGE_TO_IMAGE, "StableDiffusionImg2ImgPipeline"),
            (INPAINT, "StableDiffusionInpaintPipeline"),
        ):
            pipeline = eager_backend.edit_pipeline(mode)
            assert type(pipeline).__name__ == class_name
            for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
                assert getattr(pipeline, name) is getattr(base, name), f"{mode} has its own {name}"
            assert eager_backend.edit_pipeline(mode) is pipeline, "made once"

    def test_making_edit_pipelines_casts_no_shared_module(self) -> None:
        # DiffusionPipeline.from_pipe casts every module to float32 unless told otherwise, which would
        # silently change the text-to-image model's dtype too.
        backend = EagerBackend(build_tiny_sd(seed=0).to(dtype=torch.bfloat16))
        for mode in (IMAGE_TO_IMAGE, INPAINT):
            backend.edit_pipeline(mode)
        assert {module.dtype for module in (backend.pipeline.unet, backend.pipeline.vae)} == {torch.bfloat16}

    def test_backends_that_edit_are_the_ones_config_says(self) -> None:
        classes = {
            "compile": ("inference.backends.compile", "CompileBackend"),
            "eager": ("inference.backends.eager", "EagerBackend"),
            "onnxruntime": ("inference.backends.onnxruntime", "OnnxRuntimeBackend"),
            "tensorrt": ("inference.backends.tensorrt", "TensorRTBackend"),
        }
        assert set(classes) == set(BACKENDS)
        editing = {
            name
            for name, (module, cls) in classes.items()
            if getattr(importlib.import_module(module), cls).supports_editing
        }
        assert editing == set(EDITING_BACKENDS)


class TestImageToImage:
    def test_low_strength_keeps_the_init_image_and_full_strength_nearly_ignores_it(
        self, eager_backend: EagerBackend, make_params: MakeParams
    ) -> None:
        seed = 11

        def edits(strength: float) -> tuple[PIL.Image.Image, PIL.Image.Image]:
            first, second = (
                eager_backend.generate(_edit(make_params, init, strength, seed=seed))[0] for init in (INIT_A, INIT_B)
            )
            return first, second

        # 10 steps: strength 0.1 runs 1 of them, 1.0 all ten.
        low_a, low_b = edits(0.1)
        full_a, full_b = edits(1.0)
        round_trip = _vae_round_trip(eager_backend, INIT_A, seed)
        # Measured on tiny-sd seed 0: ~12 levels from the round trip at 0.1, ~38 at 1.0.
        assert _distance(low_a, round_trip) < 0.6 * _distance(full_a, round_trip)
        # How much the init image steers the output falls as strength grows: ~10 levels at 0.1, ~0.2 at
        # 1.0, where the init image only shifts the starting noise by 1/sigma_max.
        influence = [_distance(*pair) for pair in ((low_a, low_b), edits(0.3), edits(0.6), (full_a, full_b))]
        assert influence == sorted(influence, reverse=True)
        assert influence[0] > 20 * influence[-1]
        assert influence[-1] < 1.0

    def test_same_edit_and_seed_give_the_same_image(self, eager_backend: EagerBackend, make_params: MakeParams) -> None:
        first = eager_backend.generate(_edit(make_params, INIT_A, 0.5, seed=3))[0]
        again = eager_backend.generate(_edit(make_params, INIT_A, 0.5, seed=3))[0]
        other = eager_backend.generate(_edit(make_params, INIT_A, 0.5, seed=4))[0]
        assert np.array_equal(_pixels(first), _pixels(again))
        assert _distance(first, other) > 1.0

    @pytest.mark.parametrize(("strength", "mask"), [(0.3, None), (0.5, MASK_RIGHT), (1.0, None)])
    def test_progress_counts_the_steps_actually_run(
        self, eager_backend: EagerBackend, make_params: MakeParams, strength: float, mask: bytes | None
    ) -> None:
        params = _edit(make_params, INIT_A, strength, mask, steps=10)
        reported: list[tuple[int, int]] = []
        eager_backend.generate(params, on_step=lambda step, total: reported.append((step, total)) is None)
        run = int(10 * strength)
        assert params.denoising_steps == run
        assert reported == [(step, run) for step in range(1, run + 1)]


class TestInpainting:
    def test_unmasked_latents_are_the_init_images_and_only_the_mask_follows_the_prompt(
        self, eager_backend: EagerBackend, make_params: MakeParams
    ) -> None:
        seed = 21
        final: list[torch.Tensor] = []

        def keep_last(step: int, latents: torch.Tensor) -> None:
            final[:] = [latents.clone()]

        fox = eager_backend.generate_batch(
            [_edit(make_params, INIT_A, 1.0, MASK_RIGHT, seed=seed, prompt="a fox")], on_latents=keep_last
        )[0][0]
        pipeline = eager_backend.edit_pipeline(INPAINT)
        with torch.inference_mode():
            tensor = pipeline.image_processor.preprocess(PIL.Image.open(io.BytesIO(INIT_A)).convert("RGB"))
            encoded = pipeline.vae.encode(tensor).latent_dist.sample(torch.Generator().manual_seed(seed))
        init_latents = encoded * pipeline.vae.config.scaling_factor
        kept = SIZE // 8 // 2  # latent columns left of the mask
        # diffusers blends the init image's latents back outside the mask after every step (4-channel
        # UNets), so at the end they are exactly the init image's.
        torch.testing.assert_close(final[0][:, :, :, :kept], init_latents[:, :, :, :kept])
        assert not torch.allclose(final[0][:, :, :, kept:], init_latents[:, :, :, kept:], atol=0.1)

        heron = eager_backend.generate(_edit(make_params, INIT_A, 1.0, MASK_RIGHT, seed=seed, prompt="a heron"))[0]
        fox_px, heron_px = _pixels(fox), _pixels(heron)
        # The VAE decoder's attention spreads a little of the repainted half over the whole image, and its
        # convolutions blur the seam: compare the halves away from it.
        kept_change = _distance(fox_px[:, : SIZE // 2 - 8], heron_px[:, : SIZE // 2 - 8])
        repainted_change = _distance(fox_px[:, SIZE // 2 + 8 :], heron_px[:, SIZE // 2 + 8 :])
        assert repainted_change > 3 * kept_change


class TestBatchedEdits:
    def test_each_edit_in_a_batch_is_the_image_of_its_request_alone(
        self, eager_backend: EagerBackend, make_params: MakeParams
    ) -> None:
        mask_left = _png(PIL.Image.fromarray(255 - _HALF))
        requests = [
            _edit(make_params, INIT_A, 0.6, MASK_RIGHT, seed=5, prompt="a fox"),
            _edit(make_params, INIT_B, 0.6, mask_left, seed=6, prompt="a kite", num_images=2, negative_prompt="dark"),
            _edit(make_params, INIT_B, 0.6, seed=7),  # image-to-image: another batch
            _edit(make_params, INIT_A, 0.3, MASK_RIGHT, seed=8),  # another strength: another batch
        ]
        assert len({batch_key(request) for request in requests}) == 3
        alone = [eager_backend.generate(request) for request in requests]
        sizes: list[int] = []

        async def scenario() -> list[list[bytes]]:
            scheduler = BatchScheduler(eager_backend, max_batch_images=8, on_batch=sizes.append)
            results = await asyncio.gather(*(scheduler.run(request) for request in requests))
            return [result.pngs for result in results]

        batched = asyncio.run(scenario())
        assert sorted(sizes) == [1, 1, 3]
        for single_images, batch_pngs in zip(alone, batched, strict=True):
            assert len(single_images) == len(batch_pngs)
            for single, png in zip(single_images, batch_pngs, strict=True):
                # CPU kernels round differently at different batch sizes: at most one level in 255.
                assert np.abs(_pixels(PIL.Image.open(io.BytesIO(png))) - _pixels(single)).max() <= 1
