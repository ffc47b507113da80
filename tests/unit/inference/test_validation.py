"""GenerateRequest validation and pricing: every documented rule, and the price formula's properties."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.config import ConfigError, ModelConfig, ServeConfig
from inference.errors import RequestError
from inference.pricing import generation_cost
from inference.validation import validate_generate_request
from protos.atelier.v1 import inference_pb2

ACCOUNT = "6f1c1a4e-8a9b-4c1d-9e2f-0123456789ab"
CONFIG = ServeConfig()


def _request(**fields) -> inference_pb2.GenerateRequest:  # type: ignore[no-untyped-def]
    fields.setdefault("account_id", ACCOUNT)
    fields.setdefault("prompt", "a cat")
    return inference_pb2.GenerateRequest(**fields)


def test_defaults_come_from_the_model() -> None:
    validated = validate_generate_request(_request(seed=5), CONFIG)
    model = CONFIG.default_model
    params = validated.params
    assert (params.width, params.height, params.steps, params.num_images, params.seed) == (
        model.default_width,
        model.default_height,
        model.default_steps,
        1,
        5,
    )
    assert validated.cost == generation_cost(model, width=64, height=64, steps=20, num_images=1)


def test_absent_seed_is_random_and_leaves_room_for_every_image() -> None:
    seeds = {validate_generate_request(_request(num_images=8), CONFIG).params.seed for _ in range(20)}
    assert len(seeds) > 1
    assert all(seed + 7 < 2**64 for seed in seeds)


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"account_id": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "account_id"),
        ({"model": "sdxl"}, grpc.StatusCode.NOT_FOUND, "model"),
        ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        ({"prompt": "x" * 2001}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        ({"negative_prompt": "x" * 2001}, grpc.StatusCode.INVALID_ARGUMENT, "negative_prompt"),
        ({"width": 0}, grpc.StatusCode.INVALID_ARGUMENT, "width"),
        ({"width": 100}, grpc.StatusCode.INVALID_ARGUMENT, "width"),
        ({"height": 520}, grpc.StatusCode.INVALID_ARGUMENT, "height"),
        ({"steps": 0}, grpc.StatusCode.INVALID_ARGUMENT, "steps"),
        ({"steps": 10_000}, grpc.StatusCode.INVALID_ARGUMENT, "steps"),
        ({"guidance_scale": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "guidance_scale"),
        ({"guidance_scale": float("inf")}, grpc.StatusCode.INVALID_ARGUMENT, "guidance_scale"),
        ({"num_images": 0}, grpc.StatusCode.INVALID_ARGUMENT, "num_images"),
        ({"seed": 2**64 - 1, "num_images": 2}, grpc.StatusCode.INVALID_ARGUMENT, "seed"),
    ],
)
def test_invalid_field_is_named(fields, code, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RequestError) as raised:
        validate_generate_request(_request(**fields), CONFIG)
    assert raised.value.code == code
    assert field in raised.value.message


@given(
    width=st.integers(1, 128).map(lambda n: n * 8),
    height=st.integers(1, 128).map(lambda n: n * 8),
    steps=st.integers(1, 150),
    num_images=st.integers(1, 8),
    price=st.integers(0, 10_000),
)
def test_cost_is_at_least_one_credit_per_image_and_monotonic(width, height, steps, num_images, price) -> None:  # type: ignore[no-untyped-def]
    model = ModelConfig(name="m", millicredits_per_step=price, max_size=1024)
    cost = generation_cost(model, width=width, height=height, steps=steps, num_images=num_images)
    assert cost >= num_images
    assert cost % num_images == 0
    assert generation_cost(model, width=width, height=height, steps=steps + 1, num_images=num_images) >= cost
    exact = price * steps * width * height * num_images / (512 * 512 * 1000)
    assert exact <= cost < exact + num_images + 1e-9 or cost == num_images


def test_cost_of_a_512_image_at_the_reference_price() -> None:
    model = ModelConfig(name="m", millicredits_per_step=1000, max_size=512)
    assert generation_cost(model, width=512, height=512, steps=30, num_images=2) == 60


@pytest.mark.parametrize(
    ("values", "setting"),
    [
        ({"models": [{"name": "a", "backend": "tensorrt-x"}]}, "backend"),
        ({"models": [{"name": "a", "default_width": 60}]}, "default_width"),
        ({"models": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"models": [{"name": "a", "colour": 1}]}, "colour"),
        ({"grpc_prot": 1}, "grpc_prot"),
        ({"models": []}, "models"),
    ],
)
def test_bad_serve_config_names_the_setting(values, setting) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=setting):
        ServeConfig.from_dict(values)


class TestPreviewsAndBatchingSettings:
    def test_previews_are_off_unless_asked(self) -> None:
        assert validate_generate_request(_request(), CONFIG).preview_every == 0
        assert validate_generate_request(_request(preview_every_n_steps=5), CONFIG).preview_every == 5

    def test_preview_interval_beyond_the_step_ceiling_names_the_field(self) -> None:
        with pytest.raises(RequestError) as raised:
            validate_generate_request(_request(preview_every_n_steps=151), CONFIG)
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "preview_every_n_steps" in raised.value.message

    @pytest.mark.parametrize(
        ("setting", "value"), [("max_batch_size", 0), ("max_batch_size", 65), ("batch_wait_timeout_ms", -1.0)]
    )
    def test_batching_settings_out_of_range_name_the_setting(self, setting: str, value: float) -> None:
        with pytest.raises(ConfigError, match=setting):
            ModelConfig(name="m", **{setting: value})  # type: ignore[arg-type]


def test_an_unknown_model_name_is_echoed_only_in_part() -> None:
    # Found by tests/e2e/test_inference_fuzz.py: a 70,000-character model name came back whole
    # in the status details (which travel in HTTP/2 trailers).
    with pytest.raises(RequestError) as raised:
        validate_generate_request(_request(model="x" * 70_000), CONFIG)
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert len(raised.value.message) < 200
