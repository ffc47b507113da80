"""Shared fixtures: the tiny-sd pipeline is built once per session, as real code would load it once."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from PIL import Image

from inference.backends import EagerBackend, GenerationParams
from inference.models import build_tiny_sd


@pytest.fixture(scope="session")
def tiny_sd() -> StableDiffusionPipeline:
    return build_tiny_sd(seed=0)


@pytest.fixture(scope="session")
def eager_backend(tiny_sd: StableDiffusionPipeline) -> EagerBackend:
    return EagerBackend(tiny_sd)


@pytest.fixture(scope="session")
def make_params() -> Callable[..., GenerationParams]:
    """Build a small, fast request; tests override only the fields they are about."""
    return _make_params


@pytest.fixture(scope="session")
def pixels() -> Callable[[Image.Image], np.ndarray]:
    """Return an image's pixels as signed integers, so differences do not wrap around."""
    return _pixels


def _make_params(**overrides: object) -> GenerationParams:
    fields: dict[str, object] = {
        "prompt": "a red fox in the snow",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 3,
        "guidance_scale": 7.5,
        "seed": 1234,
        "num_images": 1,
    }
    fields.update(overrides)
    return GenerationParams(**fields)  # type: ignore[arg-type]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)
