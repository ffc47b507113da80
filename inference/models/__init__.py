"""Models atelier serves: the builtin tiny-sd pipeline and loaders for local checkpoints."""

from __future__ import annotations

from inference.models.loader import (
    BUILTIN_MODEL_NAMES,
    MODEL_SOURCE_KINDS,
    ModelSource,
    load_pipeline,
    parse_builtin,
    resolve_model_dir,
)
from inference.models.tiny_sd import TINY_SD_BUILDER_VERSION, build_tiny_sd, ensure_tiny_sd, tiny_sd_dir_name
from inference.models.tiny_sdxl import build_tiny_sdxl, ensure_tiny_sdxl

__all__ = [
    "BUILTIN_MODEL_NAMES",
    "MODEL_SOURCE_KINDS",
    "TINY_SD_BUILDER_VERSION",
    "ModelSource",
    "build_tiny_sd",
    "build_tiny_sdxl",
    "ensure_tiny_sd",
    "ensure_tiny_sdxl",
    "load_pipeline",
    "parse_builtin",
    "resolve_model_dir",
    "tiny_sd_dir_name",
]
