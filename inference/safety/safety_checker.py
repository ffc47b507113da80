"""The default output classifier: diffusers' `StableDiffusionSafetyChecker` (a CLIP vision tower and concept
embeddings), run batched on the replica's device.

The checker projects an image into CLIP's embedding space and compares it (cosine) with 17 concept embeddings,
each with its own threshold (`concept_embeds_weights`); when one of its 3 "special care" embeddings is over its
threshold, every concept threshold is lowered by 0.01. That is the published rule of the SD 1.x checkpoint's
`safety_checker`, applied here unchanged, except that a score equal to its threshold counts as over it (so a
threshold of 0 flags every image) and scores are clamped to [0, 1]. A model's `output_threshold` replaces all
17 thresholds with one (no special-care adjustment).

The builtin `tiny-safety-checker` has the same architecture with tiny dimensions and seeded random weights, as
tiny-sd has; its thresholds (0.9) sit far above the cosines its random embeddings reach, so it runs on every
image and lets tiny-sd's noise pass. A real checkpoint loads from a local directory (`from_pretrained`, never a
hub): SD 1.5's ``safety_checker/`` folder, for instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig

from inference.generation import OutputVerdict

TINY_SAFETY_CHECKER = "tiny-safety-checker"
"""The builtin classifier's setting (`ModelConfig.output_classifier`)."""

# CLIPImageProcessor's defaults, which every CLIP-based safety checker was trained with.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Published rule: a special-care concept over its threshold lowers every concept threshold by this much.
_SPECIAL_CARE_ADJUSTMENT = 0.01
# The tiny checker's thresholds: random 32-dimensional embeddings stay far below this cosine on any image.
_TINY_THRESHOLD = 0.9
_TINY_PROJECTION = 32


def build_tiny_safety_checker(seed: int = 0) -> StableDiffusionSafetyChecker:
    """The tiny `StableDiffusionSafetyChecker`: CLIP vision tower of 2 layers of width 32 on 32x32 inputs,
    17 + 3 random concept embeddings, every threshold 0.9. The same seed gives the same weights; the global
    torch RNG is left as it was."""
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 4,
        },
        projection_dim=_TINY_PROJECTION,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        checker = StableDiffusionSafetyChecker(config)
        with torch.no_grad():
            checker.concept_embeds.copy_(torch.randn(17, _TINY_PROJECTION))
            checker.special_care_embeds.copy_(torch.randn(3, _TINY_PROJECTION))
            checker.concept_embeds_weights.fill_(_TINY_THRESHOLD)
            checker.special_care_embeds_weights.fill_(_TINY_THRESHOLD)
    return checker.eval()


class SafetyCheckerClassifier:
    """`OutputClassifier` over a `StableDiffusionSafetyChecker` on one device."""

    def __init__(
        self,
        checker: StableDiffusionSafetyChecker,
        name: str,
        *,
        threshold: float | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Wraps `checker`, moved to `device` and `dtype`.

        Args:
            name: What verdicts name as their classifier.
            threshold: One threshold for every concept, in [0, 1]; None keeps the checker's own (published)
                concept thresholds and special-care adjustment.
        """
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie within [0, 1], got {threshold}")
        self.name = name
        # nn.Module.to: transformers' wrapper of PreTrainedModel.to hides its signature from type checkers.
        torch.nn.Module.to(checker, device=device, dtype=dtype)
        self._checker = checker.eval()
        self._threshold = threshold
        self._device = torch.device(device)
        self._dtype = dtype
        self._size = int(checker.config.vision_config.image_size)
        self._mean = torch.tensor(_CLIP_MEAN, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(_CLIP_STD, device=self._device).view(1, 3, 1, 1)

    def classify(self, images: Sequence[PIL.Image.Image]) -> list[OutputVerdict]:
        """See `OutputClassifier.classify`: one forward pass per distinct image size (a batch has one)."""
        verdicts: list[OutputVerdict | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.size, []).append(index)
        for indices in by_size.values():
            for index, verdict in zip(indices, self._classify_same_size([images[i] for i in indices]), strict=True):
                verdicts[index] = verdict
        return [verdict for verdict in verdicts if verdict is not None]

    @torch.inference_mode()
    def _classify_same_size(self, images: Sequence[PIL.Image.Image]) -> list[OutputVerdict]:
        checker = self._checker
        pooled = checker.vision_model(self._pixels(images))[1]
        embeds = F.normalize(checker.visual_projection(pooled).float(), dim=-1)
        # Cosines in float32, as diffusers computes them whatever the checker's dtype.
        concepts = embeds @ F.normalize(checker.concept_embeds.float(), dim=-1).T
        if self._threshold is None:
            special = embeds @ F.normalize(checker.special_care_embeds.float(), dim=-1).T
            special_care = (special >= checker.special_care_embeds_weights.float()).any(dim=1, keepdim=True)
            thresholds = checker.concept_embeds_weights.float().unsqueeze(0) - _SPECIAL_CARE_ADJUSTMENT * special_care
        else:
            thresholds = torch.full_like(concepts, self._threshold)
        scores = concepts.clamp(0.0, 1.0)
        thresholds = thresholds.clamp(0.0, 1.0).expand_as(scores)
        best = (scores - thresholds).argmax(dim=1, keepdim=True)
        # One device-to-host copy for the whole batch.
        categories = best.squeeze(1).tolist()
        best_scores = scores.gather(1, best).squeeze(1).tolist()
        best_thresholds = thresholds.gather(1, best).squeeze(1).tolist()
        return [
            OutputVerdict(f"concept_{category}", float(score), float(threshold), self.name)
            for category, score, threshold in zip(categories, best_scores, best_thresholds, strict=True)
        ]

    def _pixels(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """CLIPImageProcessor's preprocessing, on the device: shortest side to the checker's size (bicubic,
        antialiased), centre crop, CLIP's mean and std."""
        array = np.stack([np.asarray(image.convert("RGB")) for image in images])
        pixels = torch.from_numpy(array).to(self._device).permute(0, 3, 1, 2).float() / 255.0
        height, width = pixels.shape[-2:]
        scale = self._size / min(height, width)
        resized = (max(self._size, round(height * scale)), max(self._size, round(width * scale)))
        pixels = F.interpolate(pixels, size=resized, mode="bicubic", antialias=True, align_corners=False)
        top = (resized[0] - self._size) // 2
        left = (resized[1] - self._size) // 2
        pixels = pixels[:, :, top : top + self._size, left : left + self._size].clamp(0.0, 1.0)
        return ((pixels - self._mean) / self._std).to(self._dtype)


def load_output_classifier(
    setting: str, threshold: float | None, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> SafetyCheckerClassifier:
    """The classifier a model's `output_classifier` setting names, on `device`.

    Args:
        setting: ``tiny-safety-checker``, or a local directory holding a `StableDiffusionSafetyChecker`
            checkpoint (``config.json`` and its weights, as SD 1.5's ``safety_checker/`` folder does).
        threshold: The model's `output_threshold` (None: the checkpoint's published concept thresholds).

    Raises:
        FileNotFoundError: The directory holds no checkpoint (the message names the setting).
    """
    if setting == TINY_SAFETY_CHECKER:
        return SafetyCheckerClassifier(
            build_tiny_safety_checker(), TINY_SAFETY_CHECKER, threshold=threshold, device=device, dtype=dtype
        )
    directory = Path(setting)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"output_classifier {setting!r}: no StableDiffusionSafetyChecker checkpoint there (config.json missing); "
            f"give a local checkpoint directory (such as SD 1.5's safety_checker/) or {TINY_SAFETY_CHECKER!r}"
        )
    checker = StableDiffusionSafetyChecker.from_pretrained(directory, local_files_only=True)
    return SafetyCheckerClassifier(checker, directory.name[:100], threshold=threshold, device=device, dtype=dtype)


def classifier_dtype(device: str, dtype_setting: str) -> torch.dtype:
    """The checker's dtype for a model's device and `dtype` setting: float32 on a CPU or when asked, else half."""
    if device == "cpu" or dtype_setting == "float32":
        return torch.float32
    return torch.bfloat16 if dtype_setting == "bfloat16" else torch.float16
