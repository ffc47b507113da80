"""Output classifiers: judge every generated image inside the replica, batched on its device.

`OutputClassifier` is the interface; `SafetyCheckerClassifier` (diffusers' `StableDiffusionSafetyChecker`) the
default, built tiny with random weights (`tiny-safety-checker`) or loaded from a local checkpoint directory.
"""

from __future__ import annotations

from inference.safety.base import OutputClassifier
from inference.safety.safety_checker import (
    TINY_SAFETY_CHECKER,
    SafetyCheckerClassifier,
    build_tiny_safety_checker,
    classifier_dtype,
    load_output_classifier,
)

__all__ = [
    "TINY_SAFETY_CHECKER",
    "OutputClassifier",
    "SafetyCheckerClassifier",
    "build_tiny_safety_checker",
    "classifier_dtype",
    "load_output_classifier",
]
