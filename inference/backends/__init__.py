"""Generation backends behind one interface, chosen by name (``backend="eager"``)."""

from __future__ import annotations

from collections.abc import Callable

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from inference.backends.base import Backend, GenerationCancelled, GenerationParams, StepCallback
from inference.backends.eager import EagerBackend

_BACKENDS: dict[str, Callable[[DiffusionPipeline], Backend]] = {EagerBackend.name: EagerBackend}
BACKEND_NAMES: tuple[str, ...] = tuple(sorted(_BACKENDS))


def create_backend(name: str, pipeline: DiffusionPipeline) -> Backend:
    """Wrap a loaded pipeline in the backend `name` selects.

    Args:
        name: The backend's name; one of `BACKEND_NAMES`.
        pipeline: The loaded diffusers pipeline to run.

    Returns:
        The backend, ready to `generate`.

    Raises:
        ValueError: If `name` is not a known backend; the message lists the valid names.
    """
    factory = _BACKENDS.get(name)
    if factory is None:
        raise ValueError(f"backend={name!r} is not a known backend; use one of {', '.join(BACKEND_NAMES)}.")
    return factory(pipeline)


__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "EagerBackend",
    "GenerationCancelled",
    "GenerationParams",
    "StepCallback",
    "create_backend",
]
