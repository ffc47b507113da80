"""GenerateRequest validation and pricing: every documented rule, and the price formula's properties."""

from __future__ import annotations

import io

import grpc
import PIL.Image
import pytest
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.config import ConfigError, ModelConfig, ServeConfig
from inference.errors import RequestError
from inference.generation import IMAGE_TO_IMAGE, INPAINT, TEXT_TO_IMAGE
from inference.pricing import generation_cost
from inference.validation import DEFAULT_STRENGTH, validate_generate_request
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


def test_a_few_step_model_sets_its_own_default_guidance_and_a_request_may_still_ask_for_more() -> None:
    turbo = ModelConfig(name="sdxl-turbo", default_guidance_scale=0.0, default_steps=1, max_steps=4)
    config = ServeConfig(models=(turbo,))
    assert validate_generate_request(_request(seed=1), config).params.guidance_scale == 0.0
    assert validate_generate_request(_request(seed=1, guidance_scale=1.5), config).params.guidance_scale == 1.5
    with pytest.raises(ConfigError, match=r"models\[t\]\.default_guidance_scale"):
        ModelConfig(name="t", default_guidance_scale=-1.0)


def test_a_single_file_source_and_its_architecture_directory_come_together() -> None:
    assert ModelConfig(name="t", source="/m/sd15.safetensors", single_file_config="/m/sd15").single_file_config
    with pytest.raises(ConfigError, match=r"models\[t\]\.single_file_config: is required"):
        ModelConfig(name="t", source="/m/sd15.safetensors")
    with pytest.raises(ConfigError, match=r"models\[t\]\.single_file_config: applies only"):
        ModelConfig(name="t", source="/m/sd15", single_file_config="/m/sd15")


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
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert _field_violations(raised.value) == [field]


def _field_violations(error: RequestError) -> list[str]:
    """The fields the `google.rpc.BadRequest` among the error's rich details names."""
    assert error.details is not None, "INVALID_ARGUMENT without rich details"
    fields = []
    for detail in status_pb2.Status.FromString(error.details).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            fields += [violation.field for violation in request.field_violations]
    return fields


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


def _png(width: int = 32, height: int = 32, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new(mode, (width, height), 255).save(buffer, format="PNG")
    return buffer.getvalue()


class TestEditRequests:
    def test_text_to_image_has_no_edit_and_charges_every_step(self) -> None:
        validated = validate_generate_request(_request(steps=20), CONFIG)
        assert validated.params.edit is None and validated.params.mode == TEXT_TO_IMAGE
        assert validated.params.denoising_steps == 20

    def test_init_image_is_fitted_to_the_request_size_with_the_default_strength(self) -> None:
        validated = validate_generate_request(_request(init_image=_png(100, 50), width=64, height=128), CONFIG)
        edit = validated.params.edit
        assert edit is not None and edit.strength == DEFAULT_STRENGTH == 0.75 and edit.mask_png is None
        assert validated.params.mode == IMAGE_TO_IMAGE
        assert PIL.Image.open(io.BytesIO(edit.init_png)).size == (64, 128)

    def test_a_mask_makes_it_inpainting(self) -> None:
        validated = validate_generate_request(_request(init_image=_png(), mask_image=_png(mode="L")), CONFIG)
        assert validated.params.mode == INPAINT

    @pytest.mark.parametrize(("strength", "steps", "run"), [(1.0, 20, 20), (0.75, 20, 15), (0.7, 10, 7), (0.3, 10, 3)])
    def test_an_edit_is_charged_for_the_steps_it_runs(self, strength: float, steps: int, run: int) -> None:
        # 0.7 and 0.3 arrive as float32 (0.69999999...): int(steps * strength) must still count 7 and 3.
        model = ModelConfig(name="m", millicredits_per_step=100_000)
        config = ServeConfig(models=(model,))
        validated = validate_generate_request(
            _request(init_image=_png(), strength=strength, steps=steps, width=64, height=64), config
        )
        assert validated.params.denoising_steps == run
        assert validated.cost == generation_cost(model, width=64, height=64, steps=run, num_images=1)
        assert validated.cost < generation_cost(model, width=64, height=64, steps=steps, num_images=1) or run == steps

    @pytest.mark.parametrize(
        ("fields", "field", "message"),
        [
            ({"strength": 0.5}, "strength", "only valid with init_image"),
            ({"mask_image": b"x"}, "mask_image", "only valid with init_image"),
            ({"init_image": b"garbage"}, "init_image", "is not a PNG or JPEG image"),
            ({"init_image": _png()[:-30]}, "init_image", "cannot be decoded"),
            ({"init_image": _png(), "strength": 0.0}, "strength", "(0, 1]"),
            ({"init_image": _png(), "strength": 1.5}, "strength", "(0, 1]"),
            ({"init_image": _png(), "strength": float("nan")}, "strength", "(0, 1]"),
            ({"init_image": _png(), "strength": 0.05, "steps": 10}, "strength", "at least 1"),
            ({"init_image": _png(), "mask_image": b"garbage"}, "mask_image", "is not a PNG or JPEG image"),
            ({"init_image": _png(32, 32), "mask_image": _png(16, 32, "L")}, "mask_image", "dimensions 32x32"),
        ],
    )
    def test_bad_edit_fields_are_invalid_arguments_naming_the_field(
        self, fields: dict[str, object], field: str, message: str
    ) -> None:
        with pytest.raises(RequestError) as raised:
            validate_generate_request(_request(**fields), CONFIG)
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.message.startswith(f"{field}: ") and message in raised.value.message

    @pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
    def test_an_edit_of_a_model_that_cannot_edit_is_a_failed_precondition(self, backend: str) -> None:
        config = ServeConfig(models=(ModelConfig(name="fast", backend=backend),))
        assert not config.default_model.supports_editing
        with pytest.raises(RequestError) as raised:
            validate_generate_request(_request(init_image=_png()), config)
        assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "init_image" in raised.value.message and "supports_editing" in raised.value.message


_SMALL_PNG = _png(8, 8)


@settings(max_examples=80, deadline=None)
@given(strength=st.floats(width=32, allow_nan=True, allow_infinity=True), steps=st.integers(1, 50))
def test_any_strength_is_refused_by_name_or_runs_and_charges_at_least_one_step(strength: float, steps: int) -> None:
    request = _request(init_image=_SMALL_PNG, strength=strength, steps=steps)
    try:
        validated = validate_generate_request(request, CONFIG)
    except RequestError as exc:
        assert exc.code == grpc.StatusCode.INVALID_ARGUMENT and exc.message.startswith("strength: ")
        assert not (0 < strength <= 1) or int(steps * round(strength, 6)) < 1
        return
    run = validated.params.denoising_steps
    assert 1 <= run <= steps and 0 < strength <= 1
    assert validated.cost == generation_cost(CONFIG.default_model, width=64, height=64, steps=run, num_images=1)


class TestIdempotencyKey:
    def test_no_key_means_no_fingerprint(self) -> None:
        validated = validate_generate_request(_request(), CONFIG)
        assert (validated.idempotency_key, validated.request_fingerprint) == (None, b"")

    def test_the_fingerprint_covers_the_request_as_sent_but_not_the_key(self) -> None:
        # An absent seed draws a random one, but the fingerprint is of what the caller sent,
        # so a retry of the same message matches.
        first = validate_generate_request(_request(idempotency_key="a"), CONFIG)
        again = validate_generate_request(_request(idempotency_key="b"), CONFIG)
        other = validate_generate_request(_request(idempotency_key="a", seed=3), CONFIG)
        assert first.idempotency_key == "a" and len(first.request_fingerprint) == 32
        assert first.params.seed != again.params.seed
        assert first.request_fingerprint == again.request_fingerprint != other.request_fingerprint

    @pytest.mark.parametrize("key", ["", "x" * 129, "new\nline", "café"])
    def test_a_malformed_key_names_the_field(self, key: str) -> None:
        with pytest.raises(RequestError) as raised:
            validate_generate_request(_request(idempotency_key=key), CONFIG)
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.message.startswith("idempotency_key:")


def test_an_unknown_model_name_is_echoed_only_in_part() -> None:
    # Found by tests/e2e/test_inference_fuzz.py: a 70,000-character model name came back whole
    # in the status details (which travel in HTTP/2 trailers).
    with pytest.raises(RequestError) as raised:
        validate_generate_request(_request(model="x" * 70_000), CONFIG)
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert len(raised.value.message) < 200
