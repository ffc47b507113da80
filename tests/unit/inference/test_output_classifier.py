"""The output classifier: diffusers' StableDiffusionSafetyChecker, tiny by default, a local checkpoint with its
published thresholds, a per-model threshold, batched per request inside the replica's scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from inference.backends import GenerationParams
from inference.config import BUILTIN_OUTPUT_CLASSIFIERS, ConfigError, ModelConfig
from inference.deployments.batching import BatchScheduler
from inference.models import build_tiny_sd
from inference.safety import (
    TINY_SAFETY_CHECKER,
    OutputClassifier,
    SafetyCheckerClassifier,
    build_tiny_safety_checker,
    load_output_classifier,
)
from tests.unit.inference.test_batching import FakeBackend

MakeParams = Callable[..., GenerationParams]


@pytest.fixture(scope="module")
def tiny_sd_images() -> list[PIL.Image.Image]:
    """What tiny-sd makes: noise, at the default 64x64 and at 96x64."""
    pipeline = build_tiny_sd()
    square = pipeline(
        ["a lighthouse"] * 4,
        num_inference_steps=2,
        height=64,
        width=64,
        generator=[torch.Generator().manual_seed(seed) for seed in range(4)],
    ).images
    wide = pipeline("a harbour", num_inference_steps=2, height=64, width=96, generator=torch.Generator().manual_seed(9))
    return [*square, *wide.images]


def _random_images(count: int, size: tuple[int, int] = (64, 64)) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(7)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


class TestTinyClassifier:
    def test_it_lets_tiny_sds_noise_and_random_pixels_pass(self, tiny_sd_images: list[PIL.Image.Image]) -> None:
        classifier = load_output_classifier(TINY_SAFETY_CHECKER, None)
        images = [*tiny_sd_images, *_random_images(16), PIL.Image.new("RGB", (64, 64), (255, 255, 255))]
        verdicts = classifier.classify(images)
        assert len(verdicts) == len(images)
        assert not any(v.above_threshold for v in verdicts)
        assert all(v.classifier == TINY_SAFETY_CHECKER and v.category.startswith("concept_") for v in verdicts)
        assert all(0.0 <= v.score < v.threshold for v in verdicts)
        assert isinstance(classifier, OutputClassifier)

    def test_a_threshold_of_zero_flags_every_image(self, tiny_sd_images: list[PIL.Image.Image]) -> None:
        verdicts = load_output_classifier(TINY_SAFETY_CHECKER, 0.0).classify([*tiny_sd_images, *_random_images(4)])
        assert verdicts and all(v.above_threshold and v.threshold == 0.0 for v in verdicts)

    def test_a_batch_judges_each_image_as_it_is_judged_alone(self, tiny_sd_images: list[PIL.Image.Image]) -> None:
        classifier = load_output_classifier(TINY_SAFETY_CHECKER, None)
        together = classifier.classify(tiny_sd_images)
        alone = [classifier.classify([image])[0] for image in tiny_sd_images]
        assert [v.category for v in together] == [v.category for v in alone]
        assert np.allclose([v.score for v in together], [v.score for v in alone], atol=1e-5)

    def test_the_same_seed_builds_the_same_weights(self) -> None:
        first, second = build_tiny_safety_checker(0), build_tiny_safety_checker(0)
        assert torch.equal(first.concept_embeds, second.concept_embeds)
        assert not torch.equal(first.concept_embeds, build_tiny_safety_checker(1).concept_embeds)


class TestCheckpointFromLocalPath:
    def _save(self, directory: Path, concept: list[float], special: list[float]) -> Path:
        checker = build_tiny_safety_checker(seed=3)
        with torch.no_grad():
            checker.concept_embeds_weights.copy_(torch.tensor(concept))
            checker.special_care_embeds_weights.copy_(torch.tensor(special))
        checker.save_pretrained(directory)
        return directory

    def test_its_published_concept_thresholds_decide(self, tmp_path: Path) -> None:
        # Concept 5 at 0 (always present), every other out of reach, special care never triggered.
        directory = self._save(tmp_path / "safety_checker", [1.0] * 5 + [0.0] + [1.0] * 11, [1.0] * 3)
        verdicts = load_output_classifier(str(directory), None).classify(_random_images(3))
        assert [(v.category, v.threshold, v.above_threshold) for v in verdicts] == [("concept_5", 0.0, True)] * 3
        assert {v.classifier for v in verdicts} == {"safety_checker"}

    def test_special_care_lowers_every_concept_threshold_by_a_hundredth(self, tmp_path: Path) -> None:
        directory = self._save(tmp_path / "checker", [0.5] * 17, [0.0] * 3)
        verdicts = load_output_classifier(str(directory), None).classify(_random_images(2))
        assert all(v.threshold == pytest.approx(0.49) for v in verdicts)

    def test_a_models_threshold_replaces_the_published_ones(self, tmp_path: Path) -> None:
        directory = self._save(tmp_path / "checker", [0.0] * 17, [0.0] * 3)
        verdicts = load_output_classifier(str(directory), 1.0).classify(_random_images(2))
        assert all(v.threshold == 1.0 and not v.above_threshold for v in verdicts)

    def test_a_directory_without_a_checkpoint_is_refused_naming_the_setting(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match=r"output_classifier.*config\.json missing"):
            load_output_classifier(str(tmp_path), None)


class TestModelSettings:
    def test_the_builtin_names_are_in_step_with_the_safety_package(self) -> None:
        assert BUILTIN_OUTPUT_CLASSIFIERS == (TINY_SAFETY_CHECKER,)
        assert ModelConfig(name="m").output_classifier == TINY_SAFETY_CHECKER
        assert ModelConfig(name="m").output_threshold is None

    @pytest.mark.parametrize(
        ("settings", "named"),
        [
            ({"output_threshold": 1.5}, "output_threshold"),
            ({"output_threshold": -0.1}, "output_threshold"),
            ({"output_threshold": float("nan")}, "output_threshold"),
            ({"output_threshold": True}, "output_threshold"),
            ({"output_classifier": "checkpoints/safety_checker"}, "output_classifier"),
            ({"output_classifier": "CompVis/stable-diffusion-safety-checker"}, "output_classifier"),
        ],
    )
    def test_bad_settings_are_refused_at_the_edge_naming_them(self, settings: dict[str, object], named: str) -> None:
        with pytest.raises(ConfigError, match=rf"models\[m\]\.{named}"):
            ModelConfig(name="m", **settings)  # type: ignore[arg-type]

    def test_a_local_checkpoint_and_a_zero_threshold_are_accepted(self) -> None:
        model = ModelConfig(name="m", output_classifier="/models/sd15/safety_checker", output_threshold=0)
        assert model.output_threshold == 0


def test_the_scheduler_judges_every_image_of_a_batch_and_hands_each_request_its_own(make_params: MakeParams) -> None:
    classifier = SafetyCheckerClassifier(build_tiny_safety_checker(), TINY_SAFETY_CHECKER, threshold=0.0)
    calls: list[int] = []
    original = classifier.classify

    def counting(images):  # type: ignore[no-untyped-def]
        calls.append(len(images))
        return original(images)

    classifier.classify = counting  # type: ignore[method-assign]

    async def scenario() -> list[tuple[int, int, float]]:
        scheduler = BatchScheduler(FakeBackend(), max_batch_images=8, classifier=classifier)  # type: ignore[arg-type]
        results = await asyncio.gather(
            scheduler.run(make_params(seed=1, num_images=2)), scheduler.run(make_params(seed=5, num_images=1))
        )
        return [(len(r.pngs), len(r.verdicts), r.scan_ms) for r in results]

    outcome = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert [(pngs, verdicts) for pngs, verdicts, _ in outcome] == [(2, 2), (1, 1)]
    assert all(scan_ms > 0 for _, _, scan_ms in outcome)
    assert calls == [3], "one classifier pass over the whole batch"
