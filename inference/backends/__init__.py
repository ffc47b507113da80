"""Generation backends behind one interface, chosen by name (``backend="eager"``).

Each backend lives in its own module and is imported only when chosen, so a replica running `eager`
never imports onnxruntime or TensorRT.
"""

from __future__ import annotations

import importlib
from typing import Protocol

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from inference.backends.base import (
    Backend,
    BackendOptions,
    BackendUnavailable,
    GenerationCancelled,
    LatentsCallback,
    StepCallback,
)
from inference.backends.buckets import BucketedBackend
from inference.backends.eager import EagerBackend
from inference.generation import (
    GENERATION_MODES,
    IMAGE_TO_IMAGE,
    INPAINT,
    TEXT_TO_IMAGE,
    BatchKey,
    GenerationParams,
    ImageEdit,
    ShapeBuckets,
    batch_key,
    denoising_steps,
)


class _BackendFactory(Protocol):
    def __call__(self, pipeline: DiffusionPipeline, options: BackendOptions | None = None) -> Backend: ...


# name -> (module, class) of each backend.
_BACKENDS: dict[str, tuple[str, str]] = {
    "compile": ("inference.backends.compile", "CompileBackend"),
    "eager": ("inference.backends.eager", "EagerBackend"),
    "onnxruntime": ("inference.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("inference.backends.tensorrt", "TensorRTBackend"),
}
BACKEND_NAMES: tuple[str, ...] = tuple(sorted(_BACKENDS))


def create_backend(name: str, pipeline: DiffusionPipeline, options: BackendOptions | None = None) -> Backend:
    """Wrap a loaded pipeline in the backend `name` selects.

    Args:
        name: The backend's name; one of `BACKEND_NAMES`.
        pipeline: The loaded diffusers pipeline to run (a backend may replace its components).
        options: Cache directory and expected shapes, for backends that compile ahead of time.

    Returns:
        The backend, ready to `generate`. With ``options.buckets`` (and a backend other than eager) a
        `BucketedBackend`: the named backend runs the buckets' shapes, the eager path of the same
        weights every other shape; call its `warm_up` before serving.

    Raises:
        ValueError: If `name` is not a known backend; the message lists the valid names.
        BackendUnavailable: If the backend cannot run here (a library or a GPU is missing); never
            silently replaced by another backend.
    """
    entry = _BACKENDS.get(name)
    if entry is None:
        raise ValueError(f"backend={name!r} is not a known backend; use one of {', '.join(BACKEND_NAMES)}.")
    module_name, class_name = entry
    factory: _BackendFactory = getattr(importlib.import_module(module_name), class_name)
    if factory is EagerBackend:
        return EagerBackend(pipeline)
    if options is None or not options.buckets:
        return factory(pipeline, options)
    # A second pipeline object holding the same modules (no copy of the weights), made before the fast
    # backend swaps its compiled or exported modules into `pipeline`.
    eager = EagerBackend(type(pipeline).from_pipe(pipeline))
    return BucketedBackend(factory(pipeline, options), eager, options.buckets)


__all__ = [
    "BACKEND_NAMES",
    "GENERATION_MODES",
    "IMAGE_TO_IMAGE",
    "INPAINT",
    "TEXT_TO_IMAGE",
    "Backend",
    "BackendOptions",
    "BackendUnavailable",
    "BatchKey",
    "BucketedBackend",
    "EagerBackend",
    "GenerationCancelled",
    "GenerationParams",
    "ImageEdit",
    "LatentsCallback",
    "ShapeBuckets",
    "StepCallback",
    "batch_key",
    "create_backend",
    "denoising_steps",
]
