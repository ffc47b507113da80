"""The eager backend on the real tiny-sd pipeline: seeds, batches, progress and cancellation."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np
import pytest
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from PIL import Image

from inference.backends import (
    BACKEND_NAMES,
    Backend,
    EagerBackend,
    GenerationCancelled,
    GenerationParams,
    create_backend,
)

MakeParams = Callable[..., GenerationParams]
Pixels = Callable[[Image.Image], np.ndarray]


class TestSeeds:
    def test_same_seed_gives_the_same_image(
        self, eager_backend: EagerBackend, make_params: MakeParams, pixels: Pixels
    ) -> None:
        first = eager_backend.generate(make_params(seed=7))
        second = eager_backend.generate(make_params(seed=7))

        assert np.array_equal(pixels(first[0]), pixels(second[0]))

    def test_different_seed_gives_a_different_image(
        self, eager_backend: EagerBackend, make_params: MakeParams, pixels: Pixels
    ) -> None:
        first = eager_backend.generate(make_params(seed=7))
        second = eager_backend.generate(make_params(seed=8))

        assert not np.array_equal(pixels(first[0]), pixels(second[0]))

    def test_image_of_a_batch_matches_a_single_request_with_its_seed(
        self, eager_backend: EagerBackend, make_params: MakeParams, pixels: Pixels
    ) -> None:
        batch = eager_backend.generate(make_params(seed=40, num_images=2))
        singles = [eager_backend.generate(make_params(seed=40 + index))[0] for index in range(2)]

        for batched, single in zip(batch, singles, strict=True):
            # CPU kernels round differently for a batch of 2 and of 4 (classifier-free guidance doubles
            # the batch), so a pixel may differ by one level out of 255, never more.
            assert np.abs(pixels(batched) - pixels(single)).max() <= 1
        assert not np.array_equal(pixels(batch[0]), pixels(batch[1]))


class TestOutput:
    def test_returns_num_images_of_the_requested_size(
        self, eager_backend: EagerBackend, make_params: MakeParams
    ) -> None:
        images = eager_backend.generate(make_params(width=64, height=64, num_images=2))

        assert [image.size for image in images] == [(64, 64), (64, 64)]
        assert all(image.mode == "RGB" for image in images)

    def test_non_square_size_is_width_by_height(self, eager_backend: EagerBackend, make_params: MakeParams) -> None:
        (image,) = eager_backend.generate(make_params(width=96, height=64, steps=1))

        assert image.size == (96, 64)

    def test_size_the_model_cannot_make_is_a_value_error(
        self, eager_backend: EagerBackend, make_params: MakeParams
    ) -> None:
        with pytest.raises(ValueError, match="divisible by 8"):
            eager_backend.generate(make_params(width=60))


class TestProgressAndCancellation:
    def test_on_step_is_called_after_every_step(self, eager_backend: EagerBackend, make_params: MakeParams) -> None:
        calls: list[tuple[int, int]] = []

        def on_step(step: int, total: int) -> bool:
            calls.append((step, total))
            return True

        images = eager_backend.generate(make_params(steps=4), on_step=on_step)

        assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
        assert len(images) == 1

    def test_returning_false_stops_the_loop_and_raises_cancelled(
        self, eager_backend: EagerBackend, make_params: MakeParams
    ) -> None:
        calls: list[tuple[int, int]] = []

        def cancel_at_step_2(step: int, total: int) -> bool:
            calls.append((step, total))
            return step < 2

        with pytest.raises(GenerationCancelled) as cancelled:
            eager_backend.generate(make_params(steps=10), on_step=cancel_at_step_2)

        assert len(calls) == 2
        assert calls == [(1, 10), (2, 10)]
        assert (cancelled.value.completed_steps, cancelled.value.total_steps) == (2, 10)

    def test_cancelled_survives_pickling_across_processes(self) -> None:
        restored = pickle.loads(pickle.dumps(GenerationCancelled(2, 10)))

        assert isinstance(restored, GenerationCancelled)
        assert (restored.completed_steps, restored.total_steps) == (2, 10)
        assert str(restored) == "generation cancelled after 2 of 10 denoising steps"

    def test_a_cancelled_generation_does_not_affect_the_next(
        self, eager_backend: EagerBackend, make_params: MakeParams, pixels: Pixels
    ) -> None:
        expected = eager_backend.generate(make_params(seed=99))
        with pytest.raises(GenerationCancelled):
            eager_backend.generate(make_params(seed=99), on_step=lambda step, total: False)

        after = eager_backend.generate(make_params(seed=99))

        assert np.array_equal(pixels(after[0]), pixels(expected[0]))


class TestCreateBackend:
    def test_eager_wraps_the_pipeline(self, tiny_sd: StableDiffusionPipeline, make_params: MakeParams) -> None:
        backend = create_backend("eager", tiny_sd)

        assert isinstance(backend, Backend)
        assert backend.name == "eager"
        assert backend.generate(make_params(steps=1))[0].size == (64, 64)

    def test_unknown_name_lists_the_valid_names(self, tiny_sd: StableDiffusionPipeline) -> None:
        with pytest.raises(ValueError, match=r"backend='warp'") as error:
            create_backend("warp", tiny_sd)

        assert all(name in str(error.value) for name in BACKEND_NAMES)


class TestGenerationParams:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("width", 0),
            ("height", -8),
            ("steps", 0),
            ("num_images", 0),
            ("guidance_scale", -1.0),
            ("guidance_scale", float("nan")),
            ("seed", -1),
        ],
    )
    def test_out_of_range_value_names_the_field(self, make_params: MakeParams, field: str, value: object) -> None:
        with pytest.raises(ValueError, match=rf"GenerationParams\.{field}\b"):
            make_params(**{field: value})

    def test_seed_range_must_fit_every_image(self, make_params: MakeParams) -> None:
        with pytest.raises(ValueError, match=r"GenerationParams\.seed"):
            make_params(seed=2**64 - 1, num_images=2)

    def test_is_frozen(self, make_params: MakeParams) -> None:
        params = make_params()

        with pytest.raises(AttributeError):
            params.seed = 1  # type: ignore[misc]
