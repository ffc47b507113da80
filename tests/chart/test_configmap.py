"""templates/configmap.yaml: the ServeConfig file the Ray pods read, and the policy profile."""

from __future__ import annotations

import json
from typing import Any

from control_plane.policy import PolicyProfile
from inference.config import ServeConfig

from ._chart import FULLNAME, merged, render, serve_deployments


def _serve_config(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(render(values).one("ConfigMap", f"{FULLNAME}-serve-config")["data"]["serve-config.json"])


def test_serve_config_file_is_a_valid_serve_config(ci_values: dict[str, Any]) -> None:
    config = ServeConfig.from_dict(_serve_config(ci_values))

    assert config.control_plane_address == f"{FULLNAME}-control-plane.atelier.svc:50051"
    assert config.grpc_port == 9000


def test_serve_config_holds_the_same_models_as_the_serve_deployments(ci_values: dict[str, Any]) -> None:
    config = ServeConfig.from_dict(_serve_config(ci_values))
    deployments = serve_deployments(render(ci_values))

    assert {f"DiffusionModel-{m.name}" for m in config.models} == set(deployments) - {"Gateway"}
    for model in config.models:
        options = deployments[f"DiffusionModel-{model.name}"]
        assert options["ray_actor_options"]["num_gpus"] == model.num_gpus
        assert options["ray_actor_options"]["num_cpus"] == model.num_cpus
        assert options["max_ongoing_requests"] == model.max_ongoing_requests


def test_models_on_gpu_pools_run_on_cuda_with_the_pools_gpus_per_replica(minimal: dict[str, Any]) -> None:
    (model,) = ServeConfig.from_dict(_serve_config(minimal)).models

    assert (model.device, model.num_gpus, model.dtype) == ("cuda", 1, "float16")
    assert model.source == "/models/stable-diffusion-v1-5"


def test_passes_a_models_settings_through(minimal: dict[str, Any]) -> None:
    (model,) = ServeConfig.from_dict(_serve_config(minimal)).models

    assert (model.default_width, model.max_size, model.millicredits_per_step) == (512, 1024, 50)


def test_policy_profile_is_rendered_in_the_control_planes_own_format(minimal: dict[str, Any]) -> None:
    values = merged(
        minimal,
        {
            "policyProfile": {
                "trainingConsentMode": "opt_out",
                "privateContentInTraining": True,
                "inactivityPurge": {"days": 0},
            }
        },
    )

    data = render(values).one("ConfigMap", f"{FULLNAME}-policy-profile")["data"]
    profile = PolicyProfile.from_mapping(json.loads(data["profile.json"]), where="chart")

    assert profile.training_consent_mode.value == "opt_out" and profile.private_content_in_training
    assert profile.inactivity_purge_days is None
    assert profile.inactivity_exempt_tiers == ("premium",)
    assert (profile.generated_retention_days, profile.generated_retention_tiers) == (30, ("free",))
    assert profile.guardian_age is None
