"""The Serve application builder that KubeRay's serveConfigV2 and `serve run` import."""

from __future__ import annotations

import pytest
from ray.serve import Application

from inference.app import app_from_env, model_deployment_name
from inference.config import ConfigError, ModelConfig


def test_builds_an_application_from_the_charts_serve_config() -> None:
    app = app_from_env({"serve_config": {"models": [{"name": "tiny-sd"}, {"name": "tiny-b"}]}})
    assert isinstance(app, Application)


def test_model_pools_are_named_after_their_model() -> None:
    assert model_deployment_name(ModelConfig(name="sdxl")) == "DiffusionModel-sdxl"


def test_invalid_serve_config_fails_with_the_setting_named() -> None:
    with pytest.raises(ConfigError, match="backend"):
        app_from_env({"serve_config": {"models": [{"name": "a", "backend": "nope"}]}})
