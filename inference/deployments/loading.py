"""How a replica gets its backend ready: load the pipeline, wrap it in its backend, warm every bucket; and its
output classifier.

Free of Ray, so `atelier models build` (a Job before replicas start) and the latency benchmark (on a GPU
machine without this project's install) run exactly what a replica runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import PIL.Image

from inference.backends import Backend, BackendOptions, BucketedBackend, GenerationParams, create_backend
from inference.config import ModelConfig
from inference.models import ModelSource, load_pipeline
from inference.safety import OutputClassifier, classifier_dtype, load_output_classifier


def load_backend(model: ModelConfig, cache_dir: Path) -> Backend:
    """Loads `model`'s pipeline and wraps it in its backend (with its shape buckets), as a replica does.

    Compiled artefacts (ONNX exports, TensorRT engines, inductor caches) come from ``cache_dir /
    "compiled"``, built there first if missing. `atelier models build` calls this too.

    Raises:
        BackendUnavailable: The backend cannot run here (TensorRT without a GPU, ...): never a silent
            fallback to another backend.
    """
    source = ModelSource.from_setting(model.source, cache_dir, model.single_file_config)
    pipeline = load_pipeline(source, model.device, model.dtype, model.variant)
    options = BackendOptions(
        cache_dir=cache_dir / "compiled",
        max_batch_images=model.max_batch_size,
        min_size=model.min_size,
        max_size=model.max_size,
        buckets=model.buckets,
    )
    return create_backend(model.backend, pipeline, options)


def warm_up(backend: Backend, model: ModelConfig, on_bucket: Callable[[str, float], None] | None = None) -> None:
    """Runs every shape the backend serves fast once, so no request waits for a compile or a load.

    With buckets, each bucket; without, one image at the model's default size (other shapes are then
    shaped on first use).
    """
    if isinstance(backend, BucketedBackend):
        backend.warm_up(model.default_guidance_scale, on_bucket)
        return
    started = time.perf_counter()
    backend.generate(
        GenerationParams("", "", model.default_width, model.default_height, 2, model.default_guidance_scale, 0, 1)
    )
    if on_bucket is not None:
        on_bucket(f"1x{model.default_width}x{model.default_height}", time.perf_counter() - started)


def load_classifier(model: ModelConfig) -> OutputClassifier:
    """`model`'s output classifier on its device, warmed by one pass (so no request pays its first call)."""
    classifier = load_output_classifier(
        model.output_classifier,
        model.output_threshold,
        device=model.device,
        dtype=classifier_dtype(model.device, model.dtype),
    )
    classifier.classify([PIL.Image.new("RGB", (model.default_width, model.default_height))])
    return classifier
