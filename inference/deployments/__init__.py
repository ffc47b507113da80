"""Ray Serve deployments: the `Gateway` ingress and the `DiffusionModel` pools."""

from inference.deployments.diffusion_model import DiffusionModel, GenerationResult, StepProgress
from inference.deployments.gateway import Gateway

__all__ = ["DiffusionModel", "Gateway", "GenerationResult", "StepProgress"]
