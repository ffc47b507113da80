"""Shape buckets: bucketed batches run padded on the fast backend, warmed before serving; every other
batch runs on the eager path of the same weights; the config validates buckets by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inference.backends import (
    BackendOptions,
    BucketedBackend,
    EagerBackend,
    GenerationParams,
    ShapeBuckets,
    create_backend,
)
from inference.config import ConfigError, ModelConfig
from inference.models import build_tiny_sd
from tests.unit.inference.conftest import _pixels

MakeParams = Callable[..., GenerationParams]


def test_bucketed_batches_run_padded_on_the_fast_backend_and_others_eagerly(
    eager_backend: EagerBackend, make_params: MakeParams, tmp_path: Path
) -> None:
    buckets = ShapeBuckets(batch_sizes=(1, 4), sizes=((64, 64),))
    backend = create_backend("onnxruntime", build_tiny_sd(seed=0), BackendOptions(cache_dir=tmp_path, buckets=buckets))
    assert isinstance(backend, BucketedBackend) and backend.name == "onnxruntime"
    warmed: list[str] = []
    backend.warm_up(7.5, lambda bucket, seconds: warmed.append(bucket))
    assert warmed == ["1x64x64", "4x64x64"]

    fast_calls = len(warmed)
    seen_rows: list[int] = []
    # Two requests of three images in all: padded to the 4-image bucket; the filler row is dropped.
    requests = [make_params(seed=5, num_images=2), make_params(seed=9, prompt="a boat")]
    images = backend.generate_batch(requests, on_latents=lambda step, latents: seen_rows.append(latents.shape[0]))
    assert [len(request_images) for request_images in images] == [2, 1]
    assert set(seen_rows) == {3}, "previews see the real rows only"
    for request, request_images in zip(requests, images, strict=True):
        assert _max_difference(request_images, eager_backend.generate(request)) <= 1
    assert backend.eager_batches == 0 and fast_calls == 2

    # Outside the buckets: another size, and more images than the largest bucket.
    for params in (make_params(width=72, height=72), make_params(num_images=5)):
        assert _max_difference(backend.generate(params), eager_backend.generate(params)) <= 1
    assert backend.eager_batches == 2


def _max_difference(first: list, second: list) -> int:  # type: ignore[type-arg]
    # CPU kernels round differently at different batch sizes: at most one level in 255.
    return max(int(np.abs(_pixels(a) - _pixels(b)).max()) for a, b in zip(first, second, strict=True))


def test_buckets_must_name_sizes_within_the_model_limits_and_batches_within_max_batch_size() -> None:
    with pytest.raises(ConfigError, match=r"models\[m\]\.bucket_sizes.*'64x'"):
        ModelConfig(name="m", bucket_batch_sizes=(1,), bucket_sizes=("64x",))
    with pytest.raises(ConfigError, match=r"models\[m\]\.bucket_batch_sizes.*max_batch_size=2"):
        ModelConfig(name="m", max_batch_size=2, bucket_batch_sizes=(1, 4), bucket_sizes=("64x64",))
    with pytest.raises(ConfigError, match="ascending"):
        ModelConfig(name="m", bucket_batch_sizes=[4, 1], bucket_sizes=["64x64"])  # type: ignore[arg-type]
    model = ModelConfig(name="m", bucket_batch_sizes=[1, 2], bucket_sizes=["64x64", "128x64"])  # type: ignore[arg-type]
    assert model.buckets == ShapeBuckets((1, 2), ((64, 64), (128, 64)))
    assert model.buckets.padded_batch(128, 64, 2) == 2 and model.buckets.padded_batch(64, 128, 1) is None
