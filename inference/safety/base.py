"""The interface every output classifier implements: images in, one verdict per image out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import PIL.Image

from inference.generation import OutputVerdict


@runtime_checkable
class OutputClassifier(Protocol):
    """Judges generated images; runs on the replica's model thread, on the replica's device."""

    name: str
    """What verdicts name as their classifier (``tiny-safety-checker``, or a checkpoint directory's name)."""

    def classify(self, images: Sequence[PIL.Image.Image]) -> list[OutputVerdict]:
        """Judges `images` in one batched pass (per image size).

        Returns:
            One verdict per image, in order: the category whose score is nearest to, or furthest over,
            its threshold.
        """
        ...
