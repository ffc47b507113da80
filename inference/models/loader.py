"""Load a diffusion pipeline from a builtin model, a local checkpoint directory or a single-file checkpoint.

A builtin model is first saved to a local cache directory, then loaded as a local directory is, with
`DiffusionPipeline.from_pretrained`; a single ``.safetensors`` file (the original LDM key layout) is
converted by diffusers' `from_single_file` with the architecture of a local diffusers directory. Never
from a hub.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers.loaders.single_file_utils import SingleFileComponentError

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils.import_utils import is_accelerate_available

from inference.models.tiny_sd import ensure_tiny_sd
from inference.models.tiny_sdxl import ensure_tiny_sdxl

# Builtin models by name: each saves the model built with a seed under the cache directory (if not
# there yet) and returns the saved pipeline's directory. A setting names a variant as
# ``tiny-sd@seed=1`` (the default variant is seed 0).
_BUILTIN_MODELS: dict[str, Callable[[Path, int], Path]] = {"tiny-sd": ensure_tiny_sd, "tiny-sdxl": ensure_tiny_sdxl}
_VARIANT_SEPARATOR = "@seed="


def parse_builtin(value: str) -> tuple[str, int] | None:
    """Splits a builtin setting into its name and weights seed (``"tiny-sd@seed=1"`` -> ``("tiny-sd", 1)``).

    Returns:
        None when `value` names no builtin model (a local path, or a malformed variant).
    """
    name, separator, seed = value.partition(_VARIANT_SEPARATOR)
    if name not in _BUILTIN_MODELS:
        return None
    if not separator:
        return name, 0
    if not seed.isdigit():
        return None
    return name, int(seed)


BUILTIN_MODEL_NAMES: tuple[str, ...] = tuple(sorted(_BUILTIN_MODELS))
MODEL_SOURCE_KINDS: tuple[str, ...] = ("builtin", "local", "single_file")


@dataclass(frozen=True)
class ModelSource:
    """Where a pipeline's weights come from."""

    kind: str
    """``"builtin"`` for a model atelier builds itself, ``"local"`` for a diffusers checkpoint directory,
    ``"single_file"`` for one ``.safetensors`` checkpoint in the original (LDM) key layout."""

    name_or_path: str
    """A builtin model's name (see `BUILTIN_MODEL_NAMES`), optionally with a weights seed as in
    ``tiny-sd@seed=1``, or the path of a local checkpoint directory (the folder holding ``model_index.json``)."""

    cache_dir: Path | None = None
    """Directory where builtin models are saved before loading; required for ``kind="builtin"``."""

    config_dir: Path | None = None
    """A diffusers checkpoint directory giving a single file's architecture, tokenizer and scheduler;
    required for ``kind="single_file"`` (diffusers would otherwise fetch a config from the Hub)."""

    def __post_init__(self) -> None:
        if self.kind not in MODEL_SOURCE_KINDS:
            raise ValueError(
                f"ModelSource.kind={self.kind!r} is not valid; use one of {', '.join(MODEL_SOURCE_KINDS)}."
            )
        if self.kind == "builtin":
            if parse_builtin(self.name_or_path) is None:
                raise ValueError(
                    f"ModelSource.name_or_path={self.name_or_path!r} is not a builtin model; use one of "
                    f"{', '.join(BUILTIN_MODEL_NAMES)} (a variant as 'tiny-sd@seed=1'), or kind='local' with a "
                    f"checkpoint directory."
                )
            if self.cache_dir is None:
                raise ValueError(
                    "ModelSource.cache_dir is required for builtin models: set it to a writable directory "
                    "where the built model is saved."
                )
        if self.kind == "single_file" and self.config_dir is None:
            raise ValueError(
                f"ModelSource.config_dir is required for the single-file checkpoint {self.name_or_path!r}: set it "
                f"to a diffusers directory with the checkpoint's architecture (model_index.json and configs)."
            )

    @classmethod
    def from_setting(cls, value: str, cache_dir: Path, single_file_config: str = "") -> ModelSource:
        """Parse a model setting: a builtin model's name, a ``.safetensors`` file, or else a checkpoint directory.

        A builtin name wins over a relative directory of the same name; write ``./tiny-sd`` for the latter.

        Args:
            value: The setting, such as ``"tiny-sd"``, ``"/models/sd-1.5"`` or ``"/models/sd15.safetensors"``.
            cache_dir: Directory where builtin models are saved.
            single_file_config: For a ``.safetensors`` file: the diffusers directory with its architecture.

        Returns:
            The source the setting names.
        """
        if parse_builtin(value) is not None:
            return cls(kind="builtin", name_or_path=value, cache_dir=cache_dir)
        if value.endswith(".safetensors"):
            config_dir = Path(single_file_config) if single_file_config else None
            return cls(kind="single_file", name_or_path=value, cache_dir=cache_dir, config_dir=config_dir)
        return cls(kind="local", name_or_path=value, cache_dir=cache_dir)


def resolve_model_dir(source: ModelSource) -> Path:
    """Return the local directory a source's pipeline loads from, building a builtin model if needed.

    Args:
        source: The model source.

    Returns:
        A directory holding a diffusers pipeline (``model_index.json`` and one folder per component).

    Raises:
        ValueError: If a local path does not exist or holds no diffusers pipeline.
    """
    if source.kind == "builtin":
        # ModelSource's validation guarantees both; checked again so a failure names the setting
        # rather than raising a KeyError or TypeError.
        builtin = parse_builtin(source.name_or_path)
        if builtin is None or source.cache_dir is None:
            raise ValueError(f"ModelSource {source!r} is not a valid builtin source.")
        name, seed = builtin
        return _BUILTIN_MODELS[name](source.cache_dir, seed)
    setting, value = "name_or_path", source.name_or_path
    if source.kind == "single_file":
        if not Path(source.name_or_path).expanduser().is_file():
            raise ValueError(f"ModelSource.name_or_path={source.name_or_path!r} is not an existing file.")
        # The file's architecture, tokenizer and scheduler come from its config directory.
        setting, value = "config_dir", str(source.config_dir)
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"ModelSource.{setting}={value!r} is not an existing directory; point it at a "
            f"local diffusers checkpoint (the folder holding model_index.json) or use a builtin model "
            f"({', '.join(BUILTIN_MODEL_NAMES)})."
        )
    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"ModelSource.{setting}={value!r} has no model_index.json; point it at a "
            f"diffusers checkpoint directory (as written by save_pretrained), not a single weights file."
        )
    return path


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Pipelines whose denoiser is a transformer trained in bf16 (fp16 overflows in them); UNet families
# (SD 1.x/2.x, SDXL) run in fp16, their VAEs upcasting where their config says so.
_BF16_FAMILIES = ("StableDiffusion3", "Flux", "Sana", "PixArt")


def resolve_dtype(setting: str, device: str, model_dir: Path) -> torch.dtype:
    """The dtype a model's `dtype` setting means on `device` (``auto``: see `ModelConfig.dtype`)."""
    if setting != "auto":
        return _DTYPES[setting]
    if device == "cpu":
        return torch.float32
    pipeline_class = str(json.loads((model_dir / "model_index.json").read_text()).get("_class_name", ""))
    return torch.bfloat16 if pipeline_class.startswith(_BF16_FAMILIES) else torch.float16


def load_pipeline(source: ModelSource, device: str, dtype: str = "auto", variant: str = "") -> DiffusionPipeline:
    """Load a pipeline from a builtin model, a local checkpoint directory or a single file, offline.

    Args:
        source: Where the weights come from.
        device: Torch device to move the pipeline to, such as ``"cpu"`` or ``"cuda"``.
        dtype: A `ModelConfig.dtype` setting (``auto``, ``float32``, ``float16``, ``bfloat16``).
        variant: The weights variant (``fp16`` loads ``*.fp16.safetensors``); empty for unsuffixed files
            (a single file has none).

    Returns:
        The pipeline (its diffusers class is read from ``model_index.json``), on `device`, with progress
        bars disabled.

    Raises:
        ValueError: If a local path does not exist or holds no diffusers pipeline, or not `variant`, or a
            single file does not fit its configured architecture.
    """
    model_dir = resolve_model_dir(source)
    torch_dtype = resolve_dtype(dtype, device, model_dir)
    if source.kind == "single_file":
        pipeline = _load_single_file(Path(source.name_or_path).expanduser(), model_dir, torch_dtype)
    else:
        pipeline = _load_directory(model_dir, torch_dtype, variant)
    pipeline.to(device)
    # Replicas log structured lines; per-step progress bars would only interleave with them.
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _load_directory(model_dir: Path, torch_dtype: torch.dtype, variant: str) -> DiffusionPipeline:
    try:
        return DiffusionPipeline.from_pretrained(
            model_dir,
            dtype=torch_dtype,  # diffusers 0.42 deprecates `torch_dtype`
            variant=variant or None,
            local_files_only=True,
            # Without accelerate diffusers falls back on its own, but warns on every load.
            low_cpu_mem_usage=is_accelerate_available(),
        )
    except (OSError, ValueError) as exc:
        setting = f"variant={variant!r}" if variant else "variant (empty)"
        raise ValueError(
            f"cannot load {model_dir} with {setting}: {exc}. A checkpoint holding only "
            f"'*.fp16.safetensors' files needs variant='fp16'."
        ) from exc


def _load_single_file(path: Path, config_dir: Path, torch_dtype: torch.dtype) -> DiffusionPipeline:
    """`path` converted from the original key layout by the pipeline class `config_dir` names."""
    class_name = str(json.loads((config_dir / "model_index.json").read_text()).get("_class_name", ""))
    pipeline_class = getattr(diffusers, class_name, None)
    if pipeline_class is None or not hasattr(pipeline_class, "from_single_file"):
        raise ValueError(f"{config_dir}: pipeline class {class_name!r} cannot load a single-file checkpoint.")
    try:
        pipeline: DiffusionPipeline = pipeline_class.from_single_file(
            str(path), config=str(config_dir), torch_dtype=torch_dtype, local_files_only=True
        )
    except (OSError, ValueError, SingleFileComponentError) as exc:
        raise ValueError(f"cannot load {path} with the architecture of {config_dir}: {exc}") from exc
    return pipeline
