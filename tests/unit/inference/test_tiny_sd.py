"""The builtin tiny-sd model: deterministic build, on-disk cache, and loading through `load_pipeline`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from PIL import Image
from transformers import CLIPTokenizer

from inference.backends import EagerBackend, GenerationParams
from inference.models import (
    TINY_SD_BUILDER_VERSION,
    ModelSource,
    build_tiny_sd,
    ensure_tiny_sd,
    load_pipeline,
    tiny_sd_dir_name,
)
from inference.models.loader import resolve_dtype
from tests._ldm_checkpoint import save_ldm_checkpoint

MakeParams = Callable[..., GenerationParams]
Pixels = Callable[[Image.Image], np.ndarray]
_COMPONENTS = ("unet", "vae", "text_encoder")


def _state_dicts_equal(first: StableDiffusionPipeline, second: StableDiffusionPipeline) -> bool:
    for component in _COMPONENTS:
        first_state = getattr(first, component).state_dict()
        second_state = getattr(second, component).state_dict()
        if first_state.keys() != second_state.keys():
            return False
        if not all(torch.equal(first_state[key], second_state[key]) for key in first_state):
            return False
    return True


class TestBuild:
    def test_same_seed_builds_identical_weights(self, tiny_sd: StableDiffusionPipeline) -> None:
        assert _state_dicts_equal(build_tiny_sd(seed=0), tiny_sd)

    def test_different_seed_builds_different_weights(self, tiny_sd: StableDiffusionPipeline) -> None:
        assert not _state_dicts_equal(build_tiny_sd(seed=1), tiny_sd)

    def test_build_leaves_the_global_rng_alone(self) -> None:
        torch.manual_seed(5)
        expected = torch.rand(4)
        torch.manual_seed(5)

        build_tiny_sd(seed=0)

        assert torch.equal(torch.rand(4), expected)

    def test_has_stable_diffusion_shapes(self, tiny_sd: StableDiffusionPipeline) -> None:
        assert isinstance(tiny_sd, StableDiffusionPipeline)
        assert tiny_sd.vae_scale_factor == 8
        assert tiny_sd.unet.config.sample_size * tiny_sd.vae_scale_factor == 64
        assert tiny_sd.tokenizer.model_max_length == tiny_sd.text_encoder.config.max_position_embeddings == 77
        assert tiny_sd.safety_checker is None

    def test_tokenizer_encodes_any_text_and_round_trips_through_save_pretrained(
        self, tiny_sd: StableDiffusionPipeline, tmp_path: Path
    ) -> None:
        prompt = "A café on Mars, 4K — ünïcödé & emoji 🦊"
        tokenizer = tiny_sd.tokenizer
        tokenizer.save_pretrained(tmp_path)

        reloaded = CLIPTokenizer.from_pretrained(tmp_path)

        ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        assert reloaded(prompt, padding="max_length", max_length=77, truncation=True).input_ids == ids
        assert len(ids) == 77
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.unk_token_id not in ids[1 : ids.index(tokenizer.eos_token_id)]
        # CLIP lowercases, and its decoder puts a space between pre-tokenized words ("mars ,").
        decoded = reloaded.decode(ids, skip_special_tokens=True)
        assert decoded.replace(" ", "") == prompt.lower().replace(" ", "")
        assert len(tokenizer) == tiny_sd.text_encoder.config.vocab_size


class TestEnsureTinySd:
    def test_saves_a_loadable_pipeline_named_by_builder_version_and_seed(self, tmp_path: Path) -> None:
        saved = ensure_tiny_sd(tmp_path, seed=3)

        assert saved == tmp_path / tiny_sd_dir_name(3)
        assert f"v{TINY_SD_BUILDER_VERSION}" in saved.name
        assert "seed3" in saved.name
        assert (saved / "model_index.json").is_file()
        assert _state_dicts_equal(StableDiffusionPipeline.from_pretrained(saved), build_tiny_sd(seed=3))

    def test_second_call_reuses_the_saved_pipeline(self, tmp_path: Path) -> None:
        saved = ensure_tiny_sd(tmp_path)
        written_at = (saved / "model_index.json").stat().st_mtime_ns

        assert ensure_tiny_sd(tmp_path) == saved
        assert (saved / "model_index.json").stat().st_mtime_ns == written_at

    def test_concurrent_callers_get_one_complete_pipeline(self, tmp_path: Path) -> None:
        results: list[Path] = []
        errors: list[BaseException] = []

        def call() -> None:
            try:
                results.append(ensure_tiny_sd(tmp_path))
            except BaseException as error:  # reported by the assertion below
                errors.append(error)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert results == [tmp_path / tiny_sd_dir_name(0)] * 4
        assert sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock")) == [
            tiny_sd_dir_name(0)
        ]

    def test_replaces_an_incomplete_directory_and_removes_crashed_staging(self, tmp_path: Path) -> None:
        incomplete = tmp_path / tiny_sd_dir_name(0)
        (incomplete / "unet").mkdir(parents=True)
        crashed = tmp_path / f".{tiny_sd_dir_name(0)}.tmp-crashed"
        crashed.mkdir()

        saved = ensure_tiny_sd(tmp_path)

        assert (saved / "model_index.json").is_file()
        assert not crashed.exists()


class TestLoadPipeline:
    def test_builtin_loads_from_the_cache_and_generates_the_in_memory_image(
        self, tmp_path: Path, eager_backend: EagerBackend, make_params: MakeParams, pixels: Pixels
    ) -> None:
        source = ModelSource(kind="builtin", name_or_path="tiny-sd", cache_dir=tmp_path)

        loaded = load_pipeline(source, device="cpu", dtype="float32")

        assert (tmp_path / tiny_sd_dir_name(0) / "model_index.json").is_file()
        assert isinstance(loaded, StableDiffusionPipeline)
        request = make_params(seed=11, steps=3)
        (from_disk,) = EagerBackend(loaded).generate(request)
        (in_memory,) = eager_backend.generate(request)
        assert np.array_equal(pixels(from_disk), pixels(in_memory))

    def test_local_checkpoint_directory_loads_its_pipeline_class(
        self, tmp_path: Path, tiny_sd: StableDiffusionPipeline
    ) -> None:
        tiny_sd.save_pretrained(tmp_path / "checkpoint")

        loaded = load_pipeline(
            ModelSource(kind="local", name_or_path=str(tmp_path / "checkpoint")), device="cpu", dtype="float32"
        )

        assert isinstance(loaded, StableDiffusionPipeline)
        assert _state_dicts_equal(loaded, tiny_sd)

    def test_checkpoint_with_only_fp16_variant_files_loads_with_the_configured_variant(
        self, tmp_path: Path, tiny_sd: StableDiffusionPipeline
    ) -> None:
        tiny_sd.save_pretrained(tmp_path / "checkpoint", variant="fp16")
        source = ModelSource(kind="local", name_or_path=str(tmp_path / "checkpoint"))
        assert list((tmp_path / "checkpoint" / "unet").glob("*.fp16.safetensors"))

        with pytest.raises(ValueError, match="variant='fp16'"):
            load_pipeline(source, device="cpu", dtype="float32")
        loaded = load_pipeline(source, device="cpu", dtype="float32", variant="fp16")

        assert _state_dicts_equal(loaded, tiny_sd)

    def test_single_file_checkpoint_in_the_original_layout_loads_the_same_weights(
        self, tmp_path: Path, tiny_sd: StableDiffusionPipeline
    ) -> None:
        tiny_sd.save_pretrained(tmp_path / "architecture")
        checkpoint = save_ldm_checkpoint(tiny_sd, tmp_path / "tiny-sd.safetensors")
        source = ModelSource.from_setting(str(checkpoint), tmp_path, str(tmp_path / "architecture"))

        loaded = load_pipeline(source, device="cpu", dtype="float32")

        assert source.kind == "single_file"
        assert isinstance(loaded, StableDiffusionPipeline)
        assert _state_dicts_equal(loaded, tiny_sd)

    def test_single_file_needs_its_architecture_directory(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"ModelSource\.config_dir is required"):
            ModelSource.from_setting(str(tmp_path / "sd15.safetensors"), tmp_path)
        source = ModelSource.from_setting(str(tmp_path / "sd15.safetensors"), tmp_path, str(tmp_path))
        with pytest.raises(ValueError, match=r"sd15\.safetensors' is not an existing file"):
            load_pipeline(source, device="cpu", dtype="float32")
        (tmp_path / "sd15.safetensors").write_bytes(b"")
        with pytest.raises(ValueError, match=r"ModelSource\.config_dir=.*model_index\.json"):
            load_pipeline(source, device="cpu", dtype="float32")

    def test_auto_dtype_is_float32_on_the_cpu_and_half_precision_per_family_on_a_gpu(self, tmp_path: Path) -> None:
        (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
        assert resolve_dtype("auto", "cpu", tmp_path) == torch.float32
        assert resolve_dtype("auto", "cuda", tmp_path) == torch.float16
        assert resolve_dtype("bfloat16", "cuda", tmp_path) == torch.bfloat16
        (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
        assert resolve_dtype("auto", "cuda", tmp_path) == torch.bfloat16

    def test_setting_names_a_builtin_or_else_a_local_path(self, tmp_path: Path) -> None:
        assert ModelSource.from_setting("tiny-sd", tmp_path).kind == "builtin"
        assert ModelSource.from_setting(str(tmp_path / "sd15"), tmp_path).kind == "local"

    def test_unknown_builtin_names_the_setting_and_the_valid_names(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"ModelSource\.name_or_path='huge-sd'.*tiny-sd"):
            ModelSource(kind="builtin", name_or_path="huge-sd", cache_dir=tmp_path)

    def test_unknown_kind_lists_the_valid_kinds(self) -> None:
        with pytest.raises(ValueError, match=r"ModelSource\.kind='hub'.*builtin, local"):
            ModelSource(kind="hub", name_or_path="runwayml/stable-diffusion-v1-5")

    def test_builtin_without_cache_dir_names_the_setting(self) -> None:
        with pytest.raises(ValueError, match=r"ModelSource\.cache_dir"):
            ModelSource(kind="builtin", name_or_path="tiny-sd")

    def test_missing_local_path_names_the_setting(self, tmp_path: Path) -> None:
        source = ModelSource(kind="local", name_or_path=str(tmp_path / "missing"))

        with pytest.raises(ValueError, match=r"ModelSource\.name_or_path=.*not an existing directory"):
            load_pipeline(source, device="cpu", dtype="float32")

    def test_directory_without_model_index_is_refused(self, tmp_path: Path) -> None:
        source = ModelSource(kind="local", name_or_path=str(tmp_path))

        with pytest.raises(ValueError, match=r"model_index\.json"):
            load_pipeline(source, device="cpu", dtype="float32")
